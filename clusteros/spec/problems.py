"""A problem found in a spec, placed by its path in the file, and the error that carries them all."""

from __future__ import annotations

from dataclasses import dataclass

from clusteros.errors import UsageError


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    hint: str = ""
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "(top level)"
        if self.line is not None:
            where += f" (line {self.line})"
        text = f"{where}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class SpecError(UsageError):
    """The spec cannot be used. Carries every problem found, each with its own hint."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.problems)
        head = f"{self.source}: {count} problem{'s' if count != 1 else ''}"
        return "\n".join([head] + [f"  {p}" for p in self.problems])


def format_path(parts) -> str:
    """('nodes', 2, 'name') -> 'nodes[2].name'."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_path(text: str) -> list:
    """'nodes[2].name' -> ['nodes', 2, 'name']."""
    parts: list = []
    for chunk in text.replace("[", ".[").split("."):
        if chunk:
            parts.append(int(chunk[1:-1]) if chunk.startswith("[") else chunk)
    return parts
