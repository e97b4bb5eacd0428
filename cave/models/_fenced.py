"""Code in fenced Markdown blocks: the fallback for providers without tool use.

Such a model writes its code as ```` ```python ```` blocks in plain text; we run those blocks in
order and keep the rest as prose. Blocks in another language (```` ```bash ````, ```` ```json ````)
are shown, never run. A fence with no closing line is not run either (the model was cut off or
forgot it): running half a program is worse than running none, and the prose says so.
"""

from __future__ import annotations

import re

RUN_LANGUAGES = frozenset({"", "python", "py", "python3", "py3"})
"""Info strings (first word, lower-case) whose blocks are run; ``""`` is a bare fence."""

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*?)[ \t]*\r?\n?$")


def parse_fenced_code(text: str) -> tuple[str, list[str]]:
    """Split a reply into (prose, python blocks to run, in order).

    Handles ``` and ~~~ fences of any length (a closing fence uses the same character and is at
    least as long), fences indented inside lists (the indentation is removed from the block), and
    info strings like ``python title="x"``. Run blocks leave the prose; other blocks stay in it.
    """
    lines = text.splitlines(keepends=True)
    prose: list[str] = []
    blocks: list[str] = []
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
            prose.append(lines[i])
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*\r?\n?$")
        end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), None)
        if end is None:
            prose.extend(lines[i:])
            if prose and not prose[-1].endswith("\n"):
                prose.append("\n")
            prose.append(
                f"\n[Cave: the {fence} block opened on line {i + 1} has no closing {fence}, so it "
                "was not run.]\n"
            )
            break
        words = m["info"].split()
        language = words[0].lower() if words else ""
        if language in RUN_LANGUAGES:
            blocks.append("".join(_dedent(line, indent) for line in lines[i + 1 : end]))
        else:
            prose.extend(lines[i : end + 1])
        i = end + 1
    return _tidy("".join(prose)), blocks


def _dedent(line: str, width: int) -> str:
    """Remove up to ``width`` leading spaces/tabs (the fence's own indentation)."""
    k = 0
    while k < width and k < len(line) and line[k] in " \t":
        k += 1
    return line[k:]


def _tidy(prose: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", prose).strip()
