"""Render docs/spec-reference.md from the schema, so the reference never drifts from it.

    python -m clusteros.docs > docs/spec-reference.md
"""

from __future__ import annotations

import json

from clusteros.spec import load_schema

HEADER = """# cluster.yaml reference

Generated from `schema/cluster.schema.json` by `python -m clusteros.docs`; do not edit by hand
(a unit test fails when this file and the schema disagree).

Only `cluster.name` is required. Paths in the spec are relative to the spec file.

| key | type | default | allowed | meaning |
|---|---|---|---|---|
"""


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"].split("/")[-1]
        node = {**schema["$defs"][ref], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _type(node: dict) -> str:
    if "enum" in node:
        return "choice"
    if "oneOf" in node:
        return " or ".join(b.get("title", b.get("type", "?")) for b in node["oneOf"])
    return node.get("type", "")


def _allowed(node: dict) -> str:
    if "enum" in node:
        return ", ".join(f"`{v}`" for v in node["enum"])
    parts = []
    if "minimum" in node or "maximum" in node:
        parts.append(f"{node.get('minimum', '')} to {node.get('maximum', '')}")
    if "maxLength" in node:
        parts.append(f"at most {node['maxLength']} characters")
    if "pattern" in node:
        parts.append(f"`{node['pattern']}`".replace("|", "\\|"))
    if "maxItems" in node:
        parts.append(f"at most {node['maxItems']} items")
    return "; ".join(parts)


def _conditional_defaults(node: dict) -> dict[str, str]:
    """Defaults set by `if`/`then`/`else`, in words: {"suite": '`"noble"` if distro is "ubuntu", else ...'}."""
    shown: dict[str, list[str]] = {}
    for conditional in node.get("allOf", []):
        condition = " and ".join(f"{k} is {json.dumps(v['const'])}"
                                 for k, v in conditional.get("if", {}).get("properties", {}).items() if "const" in v)
        for branch, words in (("then", f" if {condition}"), ("else", " otherwise")):
            for key, sub in conditional.get(branch, {}).get("properties", {}).items():
                if "default" in sub:
                    shown.setdefault(key, []).append(f"`{json.dumps(sub['default'])}`{words}")
    return {key: ", ".join(parts) for key, parts in shown.items()}


def _rows(schema: dict, node: dict, prefix: str):
    node = _resolve(schema, node)
    conditional = _conditional_defaults(node)
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(schema, sub)
        path = f"{prefix}{key}"
        default = sub.get("default")
        shown = conditional.get(key, "") if default in (None, {}) else f"`{json.dumps(default)}`"
        yield (f"`{path}`", _type(sub), shown, _allowed(sub), sub.get("description", "").replace("|", "\\|"))
        if "properties" in sub:
            yield from _rows(schema, sub, path + ".")
        for branch in sub.get("oneOf", []):
            if "properties" in branch:
                yield from _rows(schema, branch, path + ".")
            elif "items" in branch:
                yield from _rows(schema, branch["items"], path + "[].")
        if "items" in sub and "properties" in _resolve(schema, sub["items"]):
            yield from _rows(schema, sub["items"], path + "[].")


def render() -> str:
    schema = load_schema()
    lines = ["| " + " | ".join(row) + " |" for row in _rows(schema, schema, "")]
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
