"""Reading cluster.yaml: a safe loader, hard limits, and where each value stands in the file."""

from __future__ import annotations

import yaml

from clusteros.spec.problems import Problem, SpecError, parse_path

MAX_SPEC_BYTES = 1024 * 1024
MAX_YAML_NODES = 20_000
MAX_YAML_DEPTH = 32


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _size_problem(root: yaml.Node) -> str | None:
    """Refuse alias bombs and absurd nesting before anything walks the data."""
    count = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            return f"more than {MAX_YAML_NODES} values once aliases are expanded"
        if depth > MAX_YAML_DEPTH:
            return f"nested deeper than {MAX_YAML_DEPTH} levels"
        if isinstance(node, yaml.MappingNode):
            stack.extend((v, depth + 1) for pair in node.value for v in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, depth + 1) for v in node.value)
    return None


def line_map(root: yaml.Node) -> dict[tuple, int]:
    """Map each data path (tuple of keys/indexes) to its 1-based line (a key's own line)."""
    lines: dict[tuple, int] = {(): root.start_mark.line + 1}
    stack = [((), root)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key_node, value in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                lines.setdefault(path + (key,), key_node.start_mark.line + 1)
                stack.append((path + (key,), value))
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                lines.setdefault(path + (i,), value.start_mark.line + 1)
                stack.append((path + (i,), value))
    return lines


def _decode(data: bytes, source: str) -> str:
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(source, [Problem("", f"file is {len(data)} bytes; the limit is {MAX_SPEC_BYTES}",
                                         "a cluster spec is a few kilobytes: is this the right file?")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(source, [Problem("", f"byte {exc.start} is not UTF-8", "save the file as UTF-8",
                                         line)]) from None


def parse_yaml(data: bytes, source: str) -> tuple[object, dict[tuple, int]]:
    """Parse YAML bytes into plain data and a path->line map, or raise SpecError."""
    text = _decode(data, source)
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None, {}
            if (reason := _size_problem(root)) is not None:
                raise SpecError(source, [Problem("", f"refused: {reason}",
                                                 "write the spec out plainly, without alias tricks")])
            return loader.construct_document(root), line_map(root)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(exc, "problem", None) or str(exc)
        raise SpecError(source, [Problem("", f"not valid YAML: {what}", "", line)]) from None


def place(problem: Problem, lines: dict[tuple, int]) -> Problem:
    """The problem with the line of its path, or of the nearest parent the file has."""
    parts = parse_path(problem.path)
    while parts and tuple(parts) not in lines:
        parts.pop()
    return Problem(problem.path, problem.message, problem.hint, lines.get(tuple(parts)))
