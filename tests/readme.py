"""README.md's examples, by name. A fenced block that shows something to run (one with an
info string: ``bash``, ``python``, ...) follows a line ``<!-- example: NAME -->``, and a
test runs that block as README.md has it: the README and what the tests run cannot
differ. A block with no info string is a diagram or a command's output, not an example."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / "README.md"

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!-- example: ([a-z0-9-]+) -->\n\Z")


def blocks(text: str | None = None) -> list[tuple[str | None, str, str, int]]:
    """Every fenced block: (example name or None, info string, body, line number)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()]
        marker = _MARKER.search(before[-80:])
        found.append(
            (marker.group(1) if marker else None, m.group(1).strip(), m.group(2), before.count("\n") + 1)
        )
    return found


def example(name: str) -> str:
    """The body of the README block marked ``<!-- example: name -->``."""
    (body,) = [b for n, _, b, _ in blocks() if n == name] or [None]
    assert body is not None, f"README.md has no block marked <!-- example: {name} -->"
    return body


def commands(body: str) -> list[str]:
    """A shell block's commands: its lines without comments and blank lines, a trailing
    backslash joining the next line."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
