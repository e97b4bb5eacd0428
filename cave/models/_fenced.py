"""Code in fenced Markdown blocks: the fallback for providers without tool use.

Such a model writes its code as ```` ```python ```` blocks in plain text; we run those blocks in
order and keep the rest as prose. Blocks in another language (```` ```bash ````, ```` ```json ````)
are shown, never run. A fence with no closing line is not run either (the model was cut off or
forgot it): running half a program is worse than running none, and the prose says so.

``parse_fenced_code`` splits a whole reply; ``FencedProseStream`` judges the lines the same way
while the reply streams in, so the run blocks are never shown as prose.
"""

from __future__ import annotations

import re

from ._protocol import TextSink

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
        m = _opening(lines[i])
        if m is None:
            prose.append(lines[i])
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        close = _closing(fence)
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
        if _runs(m):
            blocks.append("".join(_dedent(line, indent) for line in lines[i + 1 : end]))
        else:
            prose.extend(lines[i : end + 1])
        i = end + 1
    return _tidy("".join(prose)), blocks


def _opening(line: str) -> re.Match[str] | None:
    """The match of a line that opens a fence (a backtick fence's info has no backtick), or None."""
    m = _OPEN.match(line)
    if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
        return None
    return m


def _closing(fence: str) -> re.Pattern[str]:
    """Lines that close ``fence``: the same character, at least as many, nothing else."""
    return re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*\r?\n?$")


def _runs(opening: re.Match[str]) -> bool:
    """Whether the block this fence opens is run (its language is one of ``RUN_LANGUAGES``)."""
    words = opening["info"].split()
    return (words[0].lower() if words else "") in RUN_LANGUAGES


def _dedent(line: str, width: int) -> str:
    """Remove up to ``width`` leading spaces/tabs (the fence's own indentation)."""
    k = 0
    while k < width and k < len(line) and line[k] in " \t":
        k += 1
    return line[k:]


def _tidy(prose: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", prose).strip()


class FencedProseStream:
    """Passes streamed text to a sink, minus the fenced blocks that will run.

    Lines are judged as in ``parse_fenced_code``: a line that may open or close a fence is held
    until it is complete; other text goes out as it arrives. A run block's lines are held until
    its closing fence (then dropped) or the end of the reply (then shown: it will not run). Blank
    lines wait for the next prose, so removed blocks leave no runs of empty lines behind.
    """

    def __init__(self, sink: TextSink) -> None:
        self._sink = sink
        self._line = ""
        self._passing = False  # the current line is prose and partly shown already
        self._close: re.Pattern[str] | None = None
        self._run = False
        self._held: list[str] = []
        self._blank = ""

    def feed(self, text: str) -> None:
        """Take the next piece of the reply; pass on what is known to be prose."""
        while text:
            nl = text.find("\n")
            piece, text = (text, "") if nl < 0 else (text[: nl + 1], text[nl + 1 :])
            if self._passing:
                self._emit(piece)
            else:
                self._line += piece
                if self._line.endswith("\n"):
                    line, self._line = self._line, ""
                    self._whole_line(line)
                elif self._close is None and not _may_be_fence(self._line):
                    self._passing = True
                    self._emit(self._line)
                    self._line = ""
            if piece.endswith("\n"):
                self._passing = False

    def finish(self) -> None:
        """The reply is complete: pass on what was held (an unclosed block will not run)."""
        if self._line:
            line, self._line = self._line, ""
            self._whole_line(line)
        if self._held:
            self._emit("".join(self._held))
            self._held = []

    def _emit(self, text: str) -> None:
        if self._blank:
            text, self._blank = self._blank + text, ""
        self._sink(text)

    def _whole_line(self, line: str) -> None:
        if self._close is None:
            m = _opening(line)
            if m is None:
                if line.strip():
                    return self._emit(line)
                self._blank += line
                return None
            self._close = _closing(m["fence"])
            self._run = _runs(m)
            if self._run:
                self._blank = ""
        elif self._close.match(line):
            self._close = None
            if self._run:
                self._held = []
                return None
        if self._run:
            self._held.append(line)
        else:
            self._emit(line)
        return None


def _may_be_fence(partial: str) -> bool:
    s = partial.lstrip(" \t")
    return s.startswith(("```", "~~~")) or "```".startswith(s) or "~~~".startswith(s)
