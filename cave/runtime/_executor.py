"""Run model-written code in the agent namespace and turn what happened into text for the model.

The code runs in the *calling* thread with the namespace as its globals (the agent loop calls
:meth:`Executor.run` from a worker thread while the kernel's event loop waits). Output goes through
:mod:`._capture`; rich displays are passed to the notebook and summarised for the model; the value
of a final bare expression is kept; an exception becomes a short traceback that shows the agent's
own lines. Nothing raised by agent code escapes :meth:`Executor.run`, not even ``SystemExit``
(``exit()`` ends the step, never the kernel) or ``KeyboardInterrupt`` (reported as ``interrupted``).

Stopping a run, stated exactly:

* A timeout or :meth:`Executor.interrupt` raises an exception *inside the executing thread* with
  ``PyThreadState_SetAsyncExc`` (:class:`StepTimeout` or ``KeyboardInterrupt``, both
  ``BaseException`` so ``except Exception`` in agent code does not swallow them). It is re-raised
  every ``refire_interval`` seconds while the run lasts, so one bare ``except:`` does not defeat it.
* A thread blocked in a C call (``time.sleep``, a socket read, a long numpy operation) sees the
  exception only when it returns to Python bytecode. Code that catches ``BaseException`` in a loop
  forever cannot be stopped in-process. Threads started by agent code are not stopped.
* A late exception cannot escape: when the run ends, the watchdog is disarmed under a lock and any
  exception already scheduled but not yet delivered is cleared (``PyThreadState_SetAsyncExc(tid,
  NULL)``) before ``run`` returns.

``sys.stdout``/``sys.stderr`` are process-wide, so runs are serialised process-wide by a re-entrant
lock: two runtimes used from two threads take turns. Output that *other* threads write during a run
is captured too (this is how threads started by agent code are captured); output a thread writes
after the run ends goes to the notebook, not to the model. File descriptors 1 and 2 are redirected
for the run as well (:mod:`._fd_capture`): C extensions, ``os.write(1, ...)`` and child processes
reach the model; there, any thread's writes during the run are the run's output.

Each step's source stays in ``linecache`` for the life of the process (as IPython keeps its cells),
so a function defined in step 3 still shows its source in a traceback at step 40.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import linecache
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from .._agent_code import AGENT_FILENAME_PREFIX as _FILENAME_PREFIX
from ._capture import Capture, TeeStream
from ._fd_capture import FdCapture, prepare
from ._manifest import bounded_repr
from ._outputs import MAX_KEPT_CHARS, OutputNames, kept_line

__all__ = ["ExecutionResult", "Executor", "StepTimeout", "interrupt_thread"]

_step_ids = itertools.count(1)
_RUN_LOCK = threading.RLock()
_ACTIVE: dict[int, _RunState] = {}
_ACTIVE_LOCK = threading.Lock()
_MAX_ERROR_LINES = 20


class StepTimeout(BaseException):
    """Raised inside agent code when its step runs past its time limit.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception`` in agent code
    does not swallow it. It never escapes :meth:`Executor.run`; the result says ``timed_out``.
    """

    def __init__(self, *args: object) -> None:
        # PyThreadState_SetAsyncExc instantiates the class without arguments.
        super().__init__(*(args or ("the step ran past its time limit",)))


@dataclass(frozen=True)
class ExecutionResult:
    """What one run did, already bounded for the model."""

    output: str
    """stdout + stderr (+ display summaries) as the model sees it: head, omission note, tail."""
    value_repr: str | None
    """Bounded repr of a final bare expression; None if there is none or its value is None."""
    error: str | None
    """Short traceback: the agent's frames with source, library frames summarised, <= ~20 lines."""
    output_chars: int
    """Characters the code wrote in total (before truncation)."""
    duration_s: float
    timed_out: bool
    interrupted: bool
    kept: str | None = None
    """When the output was cut: the line naming the ``_output_N`` variable that holds it whole."""

    def for_model(self) -> str:
        """The ``tool_result`` text for this run."""
        parts: list[str] = []
        if self.output:
            parts.append(self.output.rstrip("\n"))
        if self.kept is not None:
            parts.append(self.kept)
        if self.value_repr is not None:
            parts.append(f"Out: {self.value_repr}")
        if self.timed_out:
            parts.append(f"Timed out after {self.duration_s:.1f} s; the step was stopped.")
        elif self.interrupted:
            parts.append("Interrupted by the user; the step was stopped.")
        if self.error is not None:
            stopped = self.timed_out or self.interrupted
            parts.append(self.error if stopped else "Error:\n" + self.error)
        return "\n".join(parts) or "(no output)"


# --------------------------------------------------------------------------- async exceptions

_set_exc_fn: Any = None
_clear_exc_fn: Any = None


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> int:
    """Schedule ``exc`` in thread ``thread_id`` (or clear a scheduled one when ``exc`` is None)."""
    _resolve_async_exc()
    if exc is None:
        return int(_clear_exc_fn(thread_id, None))
    return int(_set_exc_fn(thread_id, exc))


def _resolve_async_exc() -> None:
    """Look up ``PyThreadState_SetAsyncExc`` once, before any agent code runs.

    The watchdog and re-fire threads are started inside agent code, so the guard treats them as
    agent threads and refuses the ``dlsym`` a first lookup would make there: timeouts would
    never fire. ``Executor.__init__`` calls this, outside any guarded block.
    """
    global _set_exc_fn, _clear_exc_fn
    if _set_exc_fn is None:
        import ctypes

        # Private prototypes, so we never change argtypes on the shared ctypes.pythonapi object.
        # PYFUNCTYPE keeps the GIL held, which the C API requires.
        _set_exc_fn = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
            ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
        )
        _clear_exc_fn = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
            ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
        )


class _Disarmed(BaseException):
    """Private stand-in for a stop that arrived too late; raised and swallowed in ``disarm``."""


def _swallow_pending(thread_id: int) -> None:
    """Replace a stop still scheduled for this (the calling) thread, and let it arrive here.

    Clearing with ``PyThreadState_SetAsyncExc(id, NULL)`` instead leaves CPython 3.11's
    eval-breaker flag set, after which any thread running with a trace function (pdb, coverage)
    spins forever. Delivering a private exception clears the flag the normal way.
    """
    try:  # delivery can come as soon as the call below returns: schedule inside the try
        _set_async_exc(thread_id, _Disarmed)
        for _ in range(1_000_000):  # a backward jump checks the eval breaker: delivery is prompt
            pass
    except _Disarmed:
        return
    _set_async_exc(thread_id, None)  # not delivered (never seen): clear as a last resort


class _RunState:
    """The stop machinery of one run: who to stop, whether we did, and the disarm protocol."""

    def __init__(self, thread_id: int, refire_interval: float) -> None:
        self.thread_id = thread_id
        self.refire_interval = refire_interval
        self.lock = threading.Lock()
        self.active = True
        self.done = threading.Event()
        self.fired = 0
        self.timed_out = False
        self.interrupted = False
        self._refiring = False

    def fire(self, exc: type[BaseException]) -> bool:
        """Raise ``exc`` in the running thread if the run is still active; start re-firing."""
        with self.lock:
            if not self.active:
                return False
            if exc is StepTimeout:
                self.timed_out = True
            else:
                self.interrupted = True
            self.fired += 1
            _set_async_exc(self.thread_id, exc)
            start = not self._refiring
            self._refiring = True
        if start:
            threading.Thread(
                target=self._refire, args=(exc,), name="cave-refire", daemon=True
            ).start()
        return True

    def _refire(self, exc: type[BaseException]) -> None:
        while not self.done.wait(self.refire_interval):
            with self.lock:
                if not self.active:
                    return
                self.fired += 1
                _set_async_exc(self.thread_id, exc)

    def watch(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            self.fire(StepTimeout)

    def disarm(self) -> None:
        """Mark the run finished and clear any exception scheduled but not yet delivered.

        Called in the executing thread. A scheduled exception may be delivered *while* we disarm;
        we catch it and retry. After ``active`` is False under the lock nothing new is scheduled,
        and the clear removes what was, so nothing can surface after ``run`` returns.
        """
        while True:
            try:
                with self.lock:
                    self.active = False
                    fired = self.fired
                if fired:
                    _swallow_pending(self.thread_id)
                self.done.set()
                return
            except (StepTimeout, KeyboardInterrupt):
                continue


def interrupt_thread(thread_id: int) -> bool:
    """Stop the run executing in ``thread_id`` with ``KeyboardInterrupt`` (the stop button).

    Only a thread that is inside :meth:`Executor.run` is touched; returns False (and does
    nothing) for any other thread, so a stale id cannot interrupt unrelated kernel code.
    """
    with _ACTIVE_LOCK:
        state = _ACTIVE.get(thread_id)
    return state.fire(KeyboardInterrupt) if state is not None else False


# --------------------------------------------------------------------------- compile and run


def _compile(code: str, filename: str) -> tuple[Any, Any]:
    """Compile ``code`` as a module body plus, if it ends in an expression, that expression."""
    tree = ast.parse(code, filename, "exec")
    last = None
    tail = tree.body[-1] if tree.body else None
    if isinstance(tail, ast.Expr) and not _ends_with_semicolon(code):
        tree.body.pop()
        last = ast.Expression(tail.value)
    # dont_inherit: our own `from __future__ import annotations` must not leak into agent code.
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    body = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
    expr = compile(last, filename, "eval", flags=flags, dont_inherit=True) if last else None
    return body, expr


def _ends_with_semicolon(code: str) -> bool:
    """IPython's rule: a trailing ``;`` hides the value of the last expression."""
    lines = [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return bool(lines) and lines[-1].rstrip().endswith(";")


def _execute(body: Any, expr: Any, namespace: dict[str, Any]) -> Any:
    """Run the compiled step; top-level ``await`` gets a private event loop for this step."""
    loop = None
    try:
        result = eval(body, namespace)
        if body.co_flags & inspect.CO_COROUTINE:
            import asyncio

            loop = asyncio.new_event_loop()
            loop.run_until_complete(result)
        if expr is None:
            return None
        value = eval(expr, namespace)
        if expr.co_flags & inspect.CO_COROUTINE:
            import asyncio

            loop = loop or asyncio.new_event_loop()
            value = loop.run_until_complete(value)
        return value
    finally:
        if loop is not None:
            loop.close()


# --------------------------------------------------------------------------- errors


_OWN_FILES = {__file__, os.path.join(os.path.dirname(__file__), "_namespace.py")}
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


# --------------------------------------------------------------------------- displays


def _display_summary(data: Any) -> str:
    if isinstance(data, dict):
        text = data.get("text/plain")
        if isinstance(text, str):
            head = " ".join(text[:300].split())[:200]
            return f"[display: {head}]\n"
        return f"[display: {', '.join(str(k) for k in list(data)[:5])}]\n"
    return "[display]\n"


def _active_shell() -> Any:
    """The running IPython shell, without importing IPython when nobody has."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    try:
        return ipython.get_ipython()
    except Exception:
        return None


class _DisplayTap:
    """Wraps ``shell.display_pub.publish`` for one run: pass through (if echo) and summarise."""

    def __init__(self, shell: Any, capture: Capture, echo: bool) -> None:
        self.pub = getattr(shell, "display_pub", None)
        self.capture = capture
        self.summarise = True
        if self.pub is None:
            return
        self._had = "publish" in vars(self.pub)
        self._saved = vars(self.pub).get("publish")
        original = self.pub.publish

        def publish(data: Any, *args: Any, **kwargs: Any) -> Any:
            if self.summarise:
                capture.note(_display_summary(data))
            if echo:
                return original(data, *args, **kwargs)
            return None

        self.pub.publish = publish

    def restore(self) -> None:
        if self.pub is None:
            return
        if self._had:
            self.pub.publish = self._saved
        else:
            try:
                del self.pub.publish
            except AttributeError:
                pass


# --------------------------------------------------------------------------- executor


def _start_fd_capture(capture: Capture, out: Any, err: Any) -> FdCapture | None:
    """Fds 1 and 2 into ``capture`` for this run; None (today's behaviour) if that fails."""
    try:
        return FdCapture.start(capture, out, err)
    except Exception:
        return None


class Executor:
    """Runs code in one namespace; see the module docstring for what stopping guarantees."""

    def __init__(
        self,
        namespace: dict[str, Any],
        *,
        head_chars: int = 8000,
        tail_chars: int = 8000,
        echo_chars: int = 200_000,
        value_chars: int = 2000,
        refire_interval: float = 1.0,
    ) -> None:
        _resolve_async_exc()  # now, outside the guard: see _resolve_async_exc
        prepare()  # likewise: fflush and the fd pump are set up outside agent code
        self.namespace = namespace
        self.head_chars = head_chars
        self.tail_chars = tail_chars
        self.echo_chars = echo_chars
        self.value_chars = value_chars
        self.refire_interval = refire_interval
        self.keep_chars = MAX_KEPT_CHARS
        """A cut output is kept whole, up to this many characters, in ``_output_N`` (0: never)."""
        self._outputs = OutputNames()
        self._state: _RunState | None = None

    @property
    def running(self) -> bool:
        return self._state is not None

    @property
    def thread_id(self) -> int | None:
        """The thread executing a run now (for :func:`interrupt_thread`), or None."""
        state = self._state
        return state.thread_id if state is not None else None

    def interrupt(self) -> bool:
        """Stop the current run with ``KeyboardInterrupt``; False if nothing is running."""
        state = self._state
        return state.fire(KeyboardInterrupt) if state is not None else False

    def run(
        self,
        code: str,
        *,
        timeout: float | None = None,
        echo: bool = True,
        label: str = "step",
    ) -> ExecutionResult:
        """Run ``code``; never raises for anything the code does.

        ``echo``: show output live in the notebook (bounded), pass rich displays through, and
        display the final value with IPython (so a DataFrame renders as HTML). With
        ``echo=False`` the run is silent. The error is never printed here: the caller shows
        ``result.error`` as it likes (the kernel's renderer prints it to stderr).
        """
        safe_label = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:40] or "step"
        filename = f"{_FILENAME_PREFIX}{safe_label}-{next(_step_ids)}>"
        # mtime None: linecache.checkcache() keeps the entry, so later tracebacks show the source.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        capture = Capture(
            echo=echo,
            head_chars=self.head_chars,
            tail_chars=self.tail_chars,
            echo_chars=self.echo_chars,
            keep_chars=self.keep_chars,
        )
        value_repr: str | None = None
        error: BaseException | None = None
        start = time.perf_counter()
        with _RUN_LOCK:
            old_out, old_err = sys.stdout, sys.stderr
            # Before the run is registered, so no stop can land half way through the set-up.
            fds = _start_fd_capture(capture, old_out, old_err)
            try:
                state = _RunState(threading.get_ident(), self.refire_interval)
                outer, self._state = self._state, state
                with _ACTIVE_LOCK:
                    outer_active = _ACTIVE.get(state.thread_id)
                    _ACTIVE[state.thread_id] = state
                bystanders = frozenset(t.ident for t in threading.enumerate()
                                       if t.ident is not None and t.ident != state.thread_id)
                out = fds.target(1, old_out) if fds is not None else old_out
                err = fds.target(2, old_err) if fds is not None else old_err
                sync = fds.sync if fds is not None else None
                fd_out, fd_err = (1, 2) if fds is not None else (None, None)
                sys.stdout = TeeStream(capture, out, "<stdout>", bystanders, sync, fd_out)
                sys.stderr = TeeStream(capture, err, "<stderr>", bystanders, sync, fd_err)
                shell = _active_shell()
                tap = _DisplayTap(shell, capture, echo) if shell is not None else None
                watchdog: threading.Thread | None = None
                try:
                    try:
                        if timeout is not None:
                            watchdog = threading.Thread(target=state.watch, args=(timeout,),
                                                        name="cave-timeout", daemon=True)
                            watchdog.start()
                        value_repr = self._run_code(code, filename, echo, tap)
                    finally:
                        # Inline, not a helper function: a re-fired stop can be delivered on entry
                        # to a call, before disarm's own try; here it lands in this try instead.
                        while state.active:
                            try:
                                state.disarm()
                            except BaseException:  # noqa: B036 - a late stop; disarm again
                                pass
                except BaseException as exc:  # noqa: B036 - agent code must never take the kernel down
                    error = exc
                finally:
                    if tap is not None:
                        tap.restore()
                    sys.stdout, sys.stderr = old_out, old_err
                    with _ACTIVE_LOCK:
                        if outer_active is not None:
                            _ACTIVE[state.thread_id] = outer_active
                        else:
                            _ACTIVE.pop(state.thread_id, None)
                    self._state = outer
            finally:
                if fds is not None:
                    fds.stop()  # after disarm: nothing can interrupt the restore
        if watchdog is not None:
            watchdog.join()
        duration = time.perf_counter() - start
        error_text = _format_error_safely(error) if error is not None else None
        interrupted = state.interrupted or isinstance(error, KeyboardInterrupt)
        whole, kept = capture.whole(), None
        if whole is not None:
            name = self._outputs.keep(self.namespace, whole, capture.total)
            kept = kept_line(name, len(whole), capture.total)
        return ExecutionResult(
            output=capture.text(),
            value_repr=None if error is not None else value_repr,
            error=error_text,
            output_chars=capture.total,
            duration_s=duration,
            timed_out=state.timed_out,
            interrupted=interrupted and not state.timed_out,
            kept=kept,
        )

    def _run_code(
        self, code: str, filename: str, echo: bool, tap: _DisplayTap | None
    ) -> str | None:
        """Compile, run, and render the final value: all of it under the timeout."""
        body, expr = _compile(code, filename)
        value = _execute(body, expr, self.namespace)
        if value is None:
            return None
        text = bounded_repr(value, self.value_chars)
        if echo and tap is not None:
            from IPython.display import display

            tap.summarise = False  # the model already gets "Out: ..."
            display(value)
        return text
