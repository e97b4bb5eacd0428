"""The short traceback the model reads when agent code raises.

Apart from the executor because it is a formatter with its own rules: agent frames with their
source lines, a run of library frames folded into one line, the runtime's own frames hidden, and
the whole bounded.
"""

from __future__ import annotations

import linecache
import os
import re
import traceback

from .._agent_code import AGENT_FILENAME_PREFIX as _FILENAME_PREFIX
from ._stop import StepTimeout

__all__ = ["format_error"]

_MAX_ERROR_LINES = 20

_OWN_FILES = {
    os.path.join(os.path.dirname(__file__), name)
    for name in ("_executor.py", "_stop.py", "_tracebacks.py", "_namespace.py")
}
"""Frames of the runtime itself are never shown to the model."""


def _short_path(filename: str) -> str:
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        i = filename.rfind(marker)
        if i >= 0:
            return filename[i + len(marker) :]
    m = re.search(r"python3\.\d+" + re.escape(os.sep), filename)
    if m:
        return filename[m.end() :]
    return os.sep.join(filename.split(os.sep)[-2:])


def _exception_text(exc: BaseException, max_lines: int = 6, max_chars: int = 1500) -> list[str]:
    text = "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n")
    if len(text) > max_chars:
        text = text[:max_chars] + f" [... {len(text) - max_chars:,} chars cut]"
    lines = text.splitlines()
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [f"[... {len(lines) - max_lines + 1} more lines]"]
    return lines


def format_error(exc: BaseException, max_frames: int = 7) -> str:
    """A short traceback: agent frames with source lines; a run of library frames is one line."""
    frames = [
        (f.f_code.co_filename, lineno, f.f_code.co_name)
        for f, lineno in traceback.walk_tb(exc.__traceback__)
        if f.f_code.co_filename not in _OWN_FILES
    ]
    if not any(fn.startswith(_FILENAME_PREFIX) for fn, _, _ in frames):
        frames = []  # a SyntaxError from compiling the step: the message shows the line
    entries: list[str] = []
    library: list[tuple[str, int, str]] = []

    def flush() -> None:
        if not library:
            return
        shown = [library[0]] if len(library) == 1 else [library[0], library[-1]]
        where = " -> ".join(f"{_short_path(fn)}:{ln} in {name}" for fn, ln, name in shown)
        n = len(library)
        entries.append(f"  [{n} library frame{'s' if n > 1 else ''}: {where}]")
        library.clear()

    for fn, ln, name in frames:
        if fn.startswith(_FILENAME_PREFIX):
            flush()
            src = linecache.getline(fn, ln).strip()
            entry = f'  File "{fn}", line {ln}, in {name}'
            entries.append(entry + (f"\n    {src[:200]}" if src else ""))
        else:
            library.append((fn, ln, name))
    flush()
    if len(entries) > max_frames:
        omitted = len(entries) - (max_frames - 1)
        note = f"  [... {omitted} frames omitted ...]"
        entries = entries[:2] + [note] + entries[-(max_frames - 3) :]
    lines = ["Traceback (most recent call last):", *entries] if entries else []
    if isinstance(exc, StepTimeout):
        lines.append(f"StepTimeout: {exc}")
    else:
        lines += _exception_text(exc)
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        first = _exception_text(cause, max_lines=1, max_chars=200)[-1]
        lines.append(f"(raised while handling {first})")
    if isinstance(exc, SystemExit):
        lines.append("(exit() ends only this step; the runtime and its variables are kept.)")
    text = "\n".join(lines)
    out = text.splitlines()
    if len(out) > _MAX_ERROR_LINES:
        out = out[: _MAX_ERROR_LINES - 1] + [f"[... {len(out) - _MAX_ERROR_LINES + 1} more lines]"]
    return "\n".join(out)


def _format_error_safely(exc: BaseException) -> str:
    try:
        return format_error(exc)
    except Exception as failure:  # never let a hostile exception object break the result
        return f"{type(exc).__name__}: <traceback could not be formatted: {failure!r}>"
