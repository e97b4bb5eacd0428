"""Capture what a step writes to file descriptors 1 and 2, below Python, for the model.

C extensions (xgboost and lightgbm training logs), ``os.write(1, ...)`` and child processes that
inherit the descriptors write to fds 1 and 2, not to ``sys.stdout``. For the duration of one step
:class:`FdCapture` points fds 1 and 2 at two pipes (``fflush(NULL)``, ``dup``, ``dup2``). One
reader thread per process (the *pump*, started with the pipes by :func:`prepare`, outside agent
code) decodes what arrives (UTF-8, bad bytes replaced) and hands it to the running step's
:class:`~._capture.Capture` with the same echo path as ``print``: the model sees it (bounded like
any output) and the notebook shows it once, live. When the step ends (normally, on error, timeout
or interrupt) C stdio is flushed, the saved descriptors are put back, and the step's own thread
reads what is left in the pipes before the step's output is read. The pipes and the pump live as
long as the process, so a step pays for a few ``dup``/``dup2`` calls and no thread start: measured
+30 us per trivial step (a reader thread started per step measured +120 to +190 us). If the first
executor is created inside agent code, the pump starts there and is an agent thread for life.

Stated exactly:

* **Attribution is per process, not per thread.** While a step runs, *everything* written to fds
  1 and 2 is the step's output: a user's background thread, a kernel thread or a C library thread
  writing to those descriptors during the step is captured and shown to the model. (Python-level
  writes to ``sys.stdout`` by threads that existed before the step still pass through uncaptured,
  see :class:`~._capture.TeeStream`; descriptors carry no thread identity.)
* **Order** is kept within each descriptor. Before each line a step prints at Python level, the
  step takes in what is already in the pipes (one ``poll(0)``, ~1 us per printed line), so
  ``print``, ``os.write(1, ...)``, ``print`` reach the model in that order. Not guaranteed: the
  order of fd 1 against fd 2 output written between two prints (each pipe is read whole in
  turn), and, for threads writing at the same moment, anything finer than what the pipes saw.
  Everything a step wrote is in its output when ``run`` returns. A nested run first takes in what
  the outer step wrote so far. C stdio writing to a pipe is block-buffered, so ``printf`` output
  arrives in blocks or at the step's end (``fflush``), as it already does under ipykernel.
* **A child still running when the step ends** (``Popen`` without waiting, ``cmd &``) keeps the
  pipe's write end: what it writes between steps goes to the notebook stream of the last step
  (not to the model), and what it writes while a later step runs is that step's output.
* **Fallback**: where a descriptor cannot be redirected (not POSIX, fd closed, ``dup`` fails),
  that descriptor is left alone and its output does not reach the model, as before.
* A stream whose own descriptor is 1 or 2 (a plain ``sys.stdout`` outside a kernel) would write
  echoes into the pipe and read them back forever; for the step it is replaced by a writer to the
  saved descriptor.
* **The pump is a kernel thread**, outside the guard. It writes only to stream types whose
  ``write`` runs no agent-chosen code (ipykernel's ``OutStream``, ``StringIO``, a file-backed
  ``TextIOWrapper``, our own tees), checked on every write; any other echo target is written by
  the step's own thread at the step's end. Not enforced: agent code that *mutates* the objects
  the pump uses (``OutStream.echo``, the step's ``Capture`` or tee, reachable from
  ``sys.stdout``, or this module's state) can make the pump run its code unguarded. That is the
  shared-object gap :mod:`cave.security` already states; kernel threads that print during a step
  reach the same objects through the tee.
"""

from __future__ import annotations

import codecs
import contextvars
import io
import os
import select
import sys
import threading
from typing import Any, TextIO

from ._capture import Capture, TeeStream

try:
    import fcntl
except ImportError:  # Windows: no fd capture (FdCapture.start returns None there)
    fcntl = None  # type: ignore[assignment]

__all__ = ["FdCapture", "prepare"]

_CHUNK = 65536
_DRAIN_READS = 256
"""At most this many reads when a step ends (16 MiB): more than any pipe buffer holds, and a
child that keeps writing cannot hold the step's end forever."""

_fflush_fn: Any = None
_pump: _Pump | None = None
_active: list[FdCapture] = []
"""Captures whose redirection is in place, innermost last (runs are serialised by the executor)."""
_pump_lock = threading.Lock()


def prepare() -> None:
    """Look up libc ``fflush`` and start the pump, once, outside agent code.

    The guard refuses ``dlsym`` in a thread running agent code, and a thread started there would
    count as agent code for its life. ``Executor.__init__`` calls this.
    """
    global _fflush_fn
    if os.name != "posix":
        return
    if _fflush_fn is None:
        try:
            import ctypes

            fn: Any = ctypes.CDLL(None).fflush
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = ctypes.c_int
        except Exception:  # no libc symbol (static builds): C stdio buffers are not flushed
            fn = False
        _fflush_fn = fn
    _get_pump()


def _fflush() -> None:
    if _fflush_fn:
        try:
            _fflush_fn(None)
        except Exception:
            pass


class _SavedFdStream(io.TextIOBase):
    """Echo target while fd 1/2 is ours: writes to the saved descriptor, then to the real stream."""

    def __init__(self, real: TextIO, fd: int) -> None:
        super().__init__()
        self.real = real
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.real, name)

    def write(self, s: Any) -> int:
        with self._lock:
            if self._fd is None:  # the step is over (a reference kept by agent code)
                return int(self.real.write(s))
            data = str(s).encode(getattr(self.real, "encoding", None) or "utf-8", "replace")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._fd is None:
                self.real.flush()

    def release(self) -> None:
        """From now on write to the real stream: the saved descriptor is about to be closed."""
        with self._lock:
            self._fd = None


def _echo_target(stream: TextIO | None, fd: int, saved: int) -> TextIO | None:
    """``stream``, unless it writes to ``fd`` itself: then a writer to the saved copy."""
    if stream is None:
        return None
    if type(stream) is TeeStream:  # a nested run: the outer step's output, not a bystander's
        return _AsStep(stream)
    try:
        own = stream.fileno()
    except Exception:
        return stream  # ipykernel's OutStream without fd watching, StringIO
    if own != fd:
        return stream  # ipykernel's OutStream answers with its private copy: not ours
    if _active:
        # A nested run while fd 1/2 is already our pipe (``sys.stdout = sys.__stdout__`` in the
        # outer step): writing to the saved copy would feed the pipe we read. Echo where the
        # outer step does.
        return _active[-1]._targets.get(fd)
    try:
        stream.flush()  # what it buffered before the step belongs before the step
    except Exception:
        pass
    return _SavedFdStream(stream, saved)  # type: ignore[return-value]


class _AsStep:
    """Echo target for a nested run: the outer step captures fd output, whoever reads it.

    (The pump existed before the outer step began, so the outer :class:`TeeStream` would take it
    for a bystander and not capture.)
    """

    def __init__(self, tee: TeeStream) -> None:
        self.tee = tee

    def write(self, s: str) -> int:
        self.tee.write_as_step(s)
        return len(s)

    def flush(self) -> None:
        self.tee.flush()


def _trusted(stream: Any, depth: int = 0) -> bool:
    """Writing to ``stream`` runs only code the kernel's own fd watcher would run.

    The pump is a kernel thread, outside the guard. If it wrote to a stream that agent code chose
    (``sys.stdout = MyStream()`` before a nested run), agent code would run unguarded; so it writes
    only to the stream types below, checked on every write, and leaves any other echo to the
    step's own thread at the step's end.
    """
    if stream is None:
        return True
    if depth > 8:
        return False
    kind = type(stream)
    if kind is _AsStep:
        return _trusted(stream.tee.wrapped, depth + 1)
    if kind is _SavedFdStream:
        return _trusted(stream.real, depth + 1)
    if kind is io.StringIO:
        return True
    if kind is io.TextIOWrapper:
        buffer = stream.buffer
        return type(buffer) is io.BufferedWriter and type(buffer.raw) is io.FileIO
    iostream = sys.modules.get("ipykernel.iostream")
    return iostream is not None and kind is iostream.OutStream


def _above_stdio(fd: int) -> int:
    """``fd`` moved to a number above 2: with fd 1 or 2 closed, ``pipe()`` would hand it out."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


class _Pipe:
    """One of the pump's two pipes (for fd 1 or fd 2). Read only with ``lock`` held."""

    def __init__(self, pump: _Pump, fd: int) -> None:
        self.pump = pump
        self.fd = fd
        self.r, self.w = (_above_stdio(x) for x in os.pipe())
        os.set_blocking(self.r, False)  # the pump and a step's end both read it
        self.lock = threading.Lock()
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def read_into(self, sink: FdCapture | None, limit: int) -> bool:
        """Up to ``limit`` reads (lock held) for ``sink``; False once the pipe is empty."""
        for _ in range(limit):
            try:
                data = os.read(self.r, _CHUNK)
            except BlockingIOError:
                return False
            except OSError:
                return False
            if not data:
                return False
            text = self.decoder.decode(data)
            if text:
                self.pump.route(sink, self.fd, text)
        return True

    def finish(self, sink: FdCapture | None) -> None:
        """A step ends here (lock held): a half-written character becomes U+FFFD in its output."""
        tail = self.decoder.decode(b"", final=True)
        self.decoder.reset()
        if tail:
            self.pump.route(sink, self.fd, tail)


class _Pump:
    """The thread that reads the two pipes, and the pipes, for the life of the process.

    The pipes stay open between steps (their write ends are dup2'ed onto fds 1 and 2 only during
    a step), so no step pays for creating them or for waking this thread; it wakes when there is
    output. What it reads goes to the innermost running step, or, between steps (a child that
    outlived its step), to the notebook stream of the last step.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pipes = {fd: _Pipe(self, fd) for fd in (1, 2)}
        self.last_real: dict[int, TextIO | None] = {}
        self.thread = threading.Thread(target=self._run, name="cave-fd-pump", daemon=True)
        self.thread.start()

    def sink(self) -> FdCapture | None:
        return _active[-1] if _active else None

    def route(self, sink: FdCapture | None, fd: int, text: str) -> None:
        if sink is not None:
            sink.emit(fd, text)
            return
        real = self.last_real.get(fd)
        if real is not None and _trusted(real):
            try:
                real.write(text)
                if type(real) is io.TextIOWrapper:  # OutStream flushes on its own timer
                    real.flush()
            except Exception:
                pass

    def _run(self) -> None:
        poller = select.poll()
        by_r = {pipe.r: pipe for pipe in self.pipes.values()}
        for r in by_r:
            poller.register(r, select.POLLIN)
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for r, _ in events:
                pipe = by_r[r]
                try:
                    with pipe.lock:
                        sink = self.sink()
                        if sink is None:
                            pipe.read_into(None, _DRAIN_READS)
                        else:
                            sink.ctx.run(pipe.read_into, sink, _DRAIN_READS)
                except Exception:  # a broken echo target must not stop the pump
                    pass


def _get_pump() -> _Pump:
    global _pump
    with _pump_lock:
        if _pump is None or _pump.pid != os.getpid() or not _pump.thread.is_alive():
            _pump = _Pump()  # first use, or a forked child (threads do not survive fork)
        return _pump


class FdCapture:
    """Fds 1 and 2 redirected into one step's :class:`Capture`; :meth:`stop` puts them back."""

    def __init__(self, capture: Capture, pump: _Pump) -> None:
        self._capture = capture
        self._pump = pump
        self._saved: dict[int, int] = {}
        self._targets: dict[int, TextIO | None] = {}
        self._real: dict[int, TextIO | None] = {}
        self._owner = threading.get_ident()
        self._deferred: list[tuple[int, str]] = []
        self._deferred_chars = 0
        self._deferred_lock = threading.Lock()
        self._line_start = True
        self._poll: Any = None
        self.ctx = contextvars.copy_context()
        """The step's context: ipykernel keeps the cell's parent header in a ContextVar."""

    @classmethod
    def start(cls, capture: Capture, stdout: TextIO | None,
              stderr: TextIO | None) -> FdCapture | None:
        """Redirect what can be redirected; None (nothing changed) where nothing can."""
        if os.name != "posix":
            return None
        pump = _get_pump()
        cap = cls(capture, pump)
        _fflush()  # C output buffered before the step belongs before the step
        for fd, stream in ((1, stdout), (2, stderr)):
            cap._redirect(fd, stream)
        if not cap._saved:
            return None
        try:
            cap._push()
        except BaseException:
            cap.stop()  # put fds 1 and 2 back before anything leaves
            raise
        return cap

    def _push(self) -> None:
        """Become the pump's destination (a nested run first takes in the outer step's output)."""
        pipes = [self._pump.pipes[fd] for fd in sorted(self._saved)]
        for pipe in pipes:
            pipe.lock.acquire()
        try:
            if _active:
                # What the outer step wrote so far comes before the inner step's output.
                outer = _active[-1]
                for pipe in pipes:
                    outer.ctx.run(pipe.read_into, outer, _DRAIN_READS)
            _active.append(self)
        finally:
            for pipe in pipes:
                pipe.lock.release()

    def sync(self, s: str) -> None:
        """Before a Python-level write: take in fd output already in the pipes, to keep order.

        Checked once per line (when the last Python-level write ended a line) with one
        ``poll(0)``; the pipes are read only when they hold data.
        """
        if not self._line_start:
            self._line_start = s.endswith("\n")
            return
        self._line_start = s.endswith("\n")
        if not _active or _active[-1] is not self:
            return  # an outer step's tee, written through a nested run's echo: do not read here
        poll = self._poll
        if poll is None:
            poller = select.poll()
            for fd in self._saved:
                poller.register(self._pump.pipes[fd].r, select.POLLIN)
            poll = self._poll = poller.poll
        try:
            if not poll(0):
                return
        except RuntimeError:  # two threads polling at once: the pump reads it soon anyway
            return
        for fd in sorted(self._saved):
            pipe = self._pump.pipes[fd]
            with pipe.lock:
                if _active and _active[-1] is self:
                    pipe.read_into(self, _DRAIN_READS)

    def target(self, fd: int, default: TextIO | None) -> TextIO | None:
        """Where Python-level writes for ``fd`` should echo during the step."""
        return self._targets.get(fd, default)

    def _redirect(self, fd: int, stream: TextIO | None) -> None:
        try:
            saved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        except OSError:
            return  # fd closed: leave it alone
        try:
            os.dup2(self._pump.pipes[fd].w, fd)
        except OSError:
            os.close(saved)
            return
        self._saved[fd] = saved
        self._real[fd] = stream
        self._targets[fd] = _echo_target(stream, fd, saved)

    def emit(self, fd: int, text: str) -> None:
        """Text read from ``fd``'s pipe during this step."""
        target = self._targets.get(fd)
        if threading.get_ident() == self._owner or _trusted(target):
            self._capture.write(text, target)
            return
        self._capture.note(text)  # the model sees it now; the step's thread echoes it at the end
        if not self._capture.echo:
            return
        with self._deferred_lock:
            if self._deferred_chars <= self._capture.echo_chars:  # the rest would be cut anyway
                self._deferred.append((fd, text))
                self._deferred_chars += len(text)

    def stop(self) -> None:
        """Flush C stdio, restore fds 1 and 2, read what the step left in the pipes."""
        _fflush()
        for fd, saved in self._saved.items():
            try:
                os.dup2(saved, fd)
            except OSError:
                pass
        pipes = [self._pump.pipes[fd] for fd in sorted(self._saved)]
        for pipe in pipes:
            pipe.lock.acquire()
        try:
            for pipe in pipes:
                pipe.read_into(self, _DRAIN_READS)  # bounded: a live child may keep writing
                pipe.finish(self)
            if self in _active:
                _active.remove(self)
            self._pump.last_real.update(self._real)
        finally:
            for pipe in pipes:
                pipe.lock.release()
        with self._deferred_lock:
            deferred, self._deferred = self._deferred, []
        for fd, text in deferred:
            self._capture.echo_only(text, self._targets.get(fd))
        for target in self._targets.values():
            if isinstance(target, _SavedFdStream):
                target.release()
        for saved in self._saved.values():
            os.close(saved)
        self._saved.clear()
