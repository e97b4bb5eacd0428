"""Capture what agent code writes: live in the notebook (bounded), head and tail for the model.

One :class:`Capture` per run holds the model's view of the output: the first ``head_chars``
characters and a ring of the last ``tail_chars``, so printing 10 MB costs 10 MB of *time* but only
``head_chars + 2 * tail_chars`` of memory. ``sys.stdout`` and ``sys.stderr`` are replaced by two
:class:`TeeStream` objects that feed it; both share one lock, so writes from threads that agent
code starts are kept whole and in order.

Writes to file descriptors 1 and 2 below Python (C extensions, ``os.write(1, ...)``, subprocesses
that inherit the descriptors) are captured by :mod:`._fd_capture` and fed to the same
:class:`Capture`. Not captured: writes to ``sys.__stdout__`` that stay in its Python buffer
(flushed ones reach fd 1 and are captured).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Capture", "TeeStream"]


class Capture:
    """Bounded model-facing record of one run's output, plus the notebook echo budget."""

    def __init__(
        self,
        *,
        echo: bool = True,
        head_chars: int = 8000,
        tail_chars: int = 8000,
        echo_chars: int = 200_000,
        keep_chars: int = 0,
    ) -> None:
        self.echo = echo
        self.keep_chars = keep_chars
        """Also keep the first ``keep_chars`` characters whole (for ``_outputs``); 0: no."""
        self._all: list[str] = []
        self._all_len = 0
        self.head_chars = head_chars
        self.tail_chars = tail_chars
        self.echo_chars = echo_chars
        self.lock = threading.Lock()
        self.total = 0
        """Characters written so far (including display summaries)."""
        self._head: list[str] = []
        self._head_len = 0
        self._tail: list[str] = []
        self._tail_len = 0
        self._echoed = 0
        self._echo_cut = False

    # Called with self.lock held.
    def _record(self, s: str) -> None:
        self.total += len(s)
        if self._all_len < self.keep_chars:
            part = s[: self.keep_chars - self._all_len]
            self._all.append(part)
            self._all_len += len(part)
        room = self.head_chars - self._head_len
        if room > 0:
            part = s[:room]
            self._head.append(part)
            self._head_len += len(part)
            s = s[room:]
            if not s:
                return
        if len(s) >= self.tail_chars:
            self._tail = [s[-self.tail_chars :]] if self.tail_chars else []
            self._tail_len = self.tail_chars
            return
        self._tail.append(s)
        self._tail_len += len(s)
        if self._tail_len > 2 * self.tail_chars or len(self._tail) > 4096:
            joined = "".join(self._tail)[-self.tail_chars :]
            self._tail = [joined]
            self._tail_len = len(joined)

    def write(self, s: str, original: TextIO | None) -> None:
        """Record ``s`` for the model and echo it to ``original`` while the budget lasts."""
        with self.lock:
            self._record(s)
            self._echo(s, original)

    def echo_only(self, s: str, original: TextIO | None) -> None:
        """Echo text already recorded with :meth:`note` (fd output whose echo had to wait)."""
        with self.lock:
            self._echo(s, original)

    # Called with self.lock held.
    def _echo(self, s: str, original: TextIO | None) -> None:
        if not self.echo or original is None or self._echo_cut:
            return
        room = self.echo_chars - self._echoed
        if len(s) <= room:
            self._echoed += len(s)
            _safe_write(original, s)
            return
        self._echo_cut = True
        _safe_write(original, s[:room])
        self._echoed = self.echo_chars
        _safe_write(
            original,
            f"\n[output truncated in the notebook after {self.echo_chars:,} characters; "
            "the model still sees the head and the tail]\n",
        )

    def note(self, s: str) -> None:
        """Record text for the model only (display summaries); the notebook shows the display."""
        with self.lock:
            self._record(s)

    def whole(self) -> str | None:
        """The output kept whole (up to ``keep_chars``) if the model's view is cut, else None."""
        with self.lock:
            if self.total <= self.head_chars + self.tail_chars or not self._all:
                return None
            return "".join(self._all)

    def text(self) -> str:
        """The model's view: everything, or head + ``[... N characters omitted ...]`` + tail."""
        with self.lock:
            head = "".join(self._head)
            tail = "".join(self._tail)[-self.tail_chars :] if self.tail_chars else ""
            omitted = self.total - len(head) - len(tail)
        if omitted <= 0:
            return head + tail
        return f"{head}\n[... {omitted:,} characters omitted ...]\n{tail}"


def _safe_write(stream: TextIO, s: str) -> None:
    # The notebook's stream failing (closed pipe, full buffer) must not fail the agent's print.
    try:
        stream.write(s)
    except Exception:
        pass


class TeeStream(io.TextIOBase):
    """A text stream that feeds a :class:`Capture` and, while echo lasts, the original stream.

    Writes from *bystander* threads (threads that were already running when the step began: a
    user's background thread, a kernel subshell) go straight to the original stream: they are not
    the agent's output, so the model must not read them. A thread the agent starts is captured. An
    ident reused by a new thread after a bystander ends is treated as a bystander (its output is
    shown but not captured): the cost of not tracking threads one by one.
    """

    def __init__(self, capture: Capture, original: TextIO | None, name: str,
                 bystanders: frozenset[int] = frozenset(),
                 before_write: Callable[[str], None] | None = None,
                 fd: int | None = None) -> None:
        super().__init__()
        self._fd = fd
        """The descriptor whose output is captured for this stream too (fd capture), or None."""
        self._capture = capture
        self._original = original
        self._name = name
        self._bystanders = bystanders
        self._before_write = before_write
        """Called with each captured write first: takes in fd output written before it."""

    def __getattr__(self, name: str) -> Any:
        """Anything else (ipykernel's ``set_parent``, ...) is the original stream's."""
        if self._original is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._original, name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return "replace"

    @property
    def buffer(self) -> _BytesTee:
        """``sys.stdout.buffer.write(b"...")`` decodes and tees like text."""
        return _BytesTee(self)

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        """1 or 2 while fd capture redirects it into the step's output, so that
        ``subprocess.run(..., stdout=sys.stdout)`` and ``faulthandler`` work. Without fd capture,
        like StringIO: a descriptor would be the kernel's, bypassing the capture."""
        if self._fd is None:
            raise io.UnsupportedOperation("captured stream has no file descriptor")
        return self._fd

    @property
    def wrapped(self) -> TextIO | None:
        """The stream this one echoes to."""
        return self._original

    def write_as_step(self, s: str) -> None:
        """Capture ``s`` as the step's output, whichever thread calls (fd output read for it)."""
        if s:
            self._capture.write(s, self._original)

    def write(self, s: Any) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not s:
            return 0
        if threading.get_ident() in self._bystanders:
            if self._original is not None:
                _safe_write(self._original, s)
            return len(s)
        if self._before_write is not None:
            self._before_write(s)
        self._capture.write(s, self._original)
        return len(s)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._capture.echo and self._original is not None:
            try:
                self._original.flush()
            except Exception:
                pass

    def close(self) -> None:
        # Agent code closing sys.stdout must not close the kernel's stream or break later prints.
        pass


class _BytesTee:
    """The ``.buffer`` of a :class:`TeeStream`."""

    def __init__(self, text: TeeStream) -> None:
        self._text = text

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._text.write(data.decode("utf-8", errors="replace"))
        return len(data)

    def flush(self) -> None:
        self._text.flush()
