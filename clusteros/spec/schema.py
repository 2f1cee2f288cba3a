"""The schema: validation with readable messages, and the defaults it holds.

schema/cluster.schema.json is the one home of every default, including those
that depend on another value (a distro's suite and mirror: `if`/`then`/`else`).
"""

from __future__ import annotations

import copy
import difflib
import functools
import ipaddress
import json

import jsonschema

from clusteros import paths
from clusteros.spec.problems import Problem, format_path


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return paths.SCHEMA_FILE.read_text()


def load_schema() -> dict:
    return json.loads(_schema_text())


def resolve_ref(root: dict, node: dict) -> dict:
    while "$ref" in node:
        target = root
        for key in node["$ref"].lstrip("#/").split("/"):
            target = target[key]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


# --------------------------------------------------------------------------
# Formats the schema names that jsonschema does not know


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("ipv4", raises=ValueError)
def _is_ipv4(value) -> bool:
    return not isinstance(value, str) or isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)


@_FORMATS.checks("ipv4-network", raises=ValueError)
def _is_ipv4_network(value) -> bool:
    return not isinstance(value, str) or isinstance(ipaddress.ip_network(value, strict=True), ipaddress.IPv4Network)


# --------------------------------------------------------------------------
# Errors, in words a user acts on


_PATTERN_MESSAGES = {
    "hostname": ("is not a valid hostname", "use lower-case letters, digits and '-', starting with a letter"),
    "cidr": ("is not a subnet in CIDR form", "write it like 10.42.0.0/24"),
    "ipv4": ("is not an IPv4 address", "write it like 10.42.0.11"),
    "mac": ("is not a MAC address", "write it in lower case like 52:54:00:12:34:56"),
    "url": ("is not an http(s) or file URL", "write it like http://deb.debian.org/debian"),
    "disk_size": ("is not a size", "write a number with M or G, like 4G"),
    "ssh_keys": ("is not an SSH public key", "paste one line of a .pub file, e.g. 'ssh-ed25519 AAAA... you@host'"),
    "sha256": ("is not a sha256 hex digest", "64 lower-case hex digits, as sha256sum prints"),
}
_FORMAT_MESSAGES = {
    "ipv4": ("is not an IPv4 address", "each of the four numbers is 0 to 255, like 10.42.0.11"),
    "ipv4-network": ("is not an IPv4 subnet", "the host bits must be zero and each number 0 to 255, e.g. 10.42.0.0/24"),
}


def _pattern_message(schema: dict, error) -> tuple[str, str]:
    ref = error.schema.get("$ref", "")
    candidates = [ref.rsplit("/", 1)[-1]] if ref else []
    candidates += [p for p in reversed(list(error.absolute_path)) if isinstance(p, str)][:2]
    candidates += [k for k, v in schema["$defs"].items() if v.get("pattern") == error.schema.get("pattern")]
    for name in candidates:
        if name in _PATTERN_MESSAGES:
            return _PATTERN_MESSAGES[name]
    return "has the wrong form", f"it must match {error.schema.get('pattern')}"


def _unknown_keys(schema, error, path, value) -> list[Problem]:
    allowed = sorted(error.schema.get("properties", {}))
    problems = []
    for key in sorted(set(value) - set(allowed), key=str):
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
        if key == "psk":
            hint = "a WiFi key never goes in cluster.yaml: set psk_env (an environment variable) or psk_file"
        elif key == "vnc_base_port":
            hint = "remove it: a test node's screen is now a VNC socket in its own folder (dist/vm/<node>/vnc.sock)"
        problems.append(Problem(format_path(path + [key]), "unknown key", hint))
    return problems


def _missing_keys(schema, error, path, value) -> list[Problem]:
    return [Problem(format_path(path + [k]), "is required", "") for k in error.validator_value if k not in value]


def _bad_pattern(schema, error, path, value) -> list[Problem]:
    message, hint = _pattern_message(schema, error)
    return [Problem(format_path(path), f"{value!r} {message}", hint)]


def _bad_format(schema, error, path, value) -> list[Problem]:
    message, hint = _FORMAT_MESSAGES.get(error.validator_value, ("has the wrong form", ""))
    # ipaddress says why a subnet is wrong ("has host bits set"); for an address the message says it all.
    why = f" ({error.cause})" if error.cause and error.validator_value == "ipv4-network" else ""
    return [Problem(format_path(path), f"{value!r} {message}{why}", hint)]


def _not_in_enum(schema, error, path, value) -> list[Problem]:
    options = ", ".join(repr(o) for o in error.validator_value)
    close = difflib.get_close_matches(str(value), [str(o) for o in error.validator_value], n=1)
    return [Problem(format_path(path), f"{value!r} is not one of {options}",
                    f"did you mean {close[0]!r}?" if close else "")]


def _wrong_type(schema, error, path, value) -> list[Problem]:
    return [Problem(format_path(path), f"{value!r} should be {_a(error.validator_value)}, not {_a(_json_type(value))}")]


def _out_of_range(schema, error, path, value) -> list[Problem]:
    lo, hi = error.schema.get("minimum"), error.schema.get("maximum")
    return [Problem(format_path(path), f"{value!r} is out of range", f"allowed: {lo} to {hi}")]


def _bad_length(schema, error, path, value) -> list[Problem]:
    return [Problem(format_path(path), f"is {len(value)} characters long",
                    f"allowed: {error.schema.get('minLength', 0)} to {error.schema.get('maxLength', 'any')}")]


def _bad_count(schema, error, path, value) -> list[Problem]:
    return [Problem(format_path(path), f"has {len(value)} entries",
                    f"allowed: {error.schema.get('minItems', 0)} to {error.schema.get('maxItems', 'any')}")]


def _duplicates(schema, error, path, value) -> list[Problem]:
    return [Problem(format_path(path), "has duplicate entries", "list each only once")]


def _no_branch(schema, error, path, value) -> list[Problem]:
    """A value that is none of its choices (oneOf). nodes, a count or a list: report against the
    branch the user obviously meant; any other: name the choices."""
    branches = [resolve_ref(schema, b) for b in error.validator_value]
    if not any(b.get("type") in ("object", "array") for b in branches):
        choices = " nor ".join(_choice(b) for b in branches)
        return [Problem(format_path(path), f"{value!r} is neither {choices}")]
    if error.context and isinstance(value, (list, dict)):
        branch = [e for e in error.context if (e.schema_path[0] == 1) == isinstance(value, list)]
        problems = [p for sub in branch for p in describe(schema, sub)]
        if problems:
            return problems
    return [Problem(format_path(path), f"{value!r} is neither a node count nor a node list",
                    "write `nodes: {count: 3}` or a list of `- name: node1`")]


def _choice(branch: dict) -> str:
    if "const" in branch:
        return repr(branch["const"])
    if "minimum" in branch and "maximum" in branch:
        return f"{_a(branch['type'])} from {branch['minimum']} to {branch['maximum']}"
    return _a(branch.get("type", "value"))


_DESCRIBERS = {
    "additionalProperties": _unknown_keys, "required": _missing_keys, "pattern": _bad_pattern,
    "format": _bad_format, "enum": _not_in_enum, "type": _wrong_type,
    "minimum": _out_of_range, "maximum": _out_of_range,
    "minLength": _bad_length, "maxLength": _bad_length, "minItems": _bad_count, "maxItems": _bad_count,
    "uniqueItems": _duplicates, "oneOf": _no_branch,
}


def describe(schema: dict, error) -> list[Problem]:
    path = list(error.absolute_path)
    describer = _DESCRIBERS.get(error.validator)
    if describer is None:
        return [Problem(format_path(path), error.message)]
    return describer(schema, error, path, error.instance)


def _json_type(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _a(kind) -> str:
    if isinstance(kind, list):
        return " or ".join(_a(k) for k in kind)
    return ("an " if str(kind)[0] in "aeiou" else "a ") + str(kind)


def schema_problems(data, schema: dict) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)
    problems: list[Problem] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        problems.extend(describe(schema, error))
    return problems


# --------------------------------------------------------------------------
# Defaults


def fill_defaults(data, schema: dict, root: dict | None = None):
    """Return a copy of `data` with every default from the schema filled in.

    Follows properties, items, the oneOf branch of the value's type, and the
    `then`/`else` of an `if` (which is checked against the object as filled so far).
    """
    root = root or schema
    schema = resolve_ref(root, schema)
    if isinstance(data, dict) and "properties" in schema:
        out = _fill_properties(data, schema["properties"], root)
        for conditional in schema.get("allOf", []):
            branch = _taken_branch(conditional, out, root)
            if branch is not None:
                out = _fill_properties(out, branch.get("properties", {}), root)
        return out
    if isinstance(data, list) and "items" in schema:
        return [fill_defaults(item, schema["items"], root) for item in data]
    for branch in schema.get("oneOf", []):
        if branch.get("type") == _json_type(data):
            return fill_defaults(data, branch, root)
    return data


def _fill_properties(data: dict, properties: dict, root: dict) -> dict:
    out = dict(data)
    for key, sub in properties.items():
        sub = resolve_ref(root, sub)
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = fill_defaults(out[key], sub, root)
    return out


def _taken_branch(conditional: dict, data: dict, root: dict) -> dict | None:
    if "if" not in conditional:
        return None
    test = {**conditional["if"], "$defs": root.get("$defs", {})}
    matched = jsonschema.Draft202012Validator(test).is_valid(data)
    return conditional.get("then") if matched else conditional.get("else")


def default_of(schema: dict, def_name: str):
    """The default a `$defs` entry carries (for values the resolved spec needs but no key holds)."""
    return schema["$defs"][def_name]["default"]
