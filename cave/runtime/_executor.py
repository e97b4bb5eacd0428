"""Run model-written code in the agent namespace and turn what happened into text for the model.

The code runs in the *calling* thread with the namespace as its globals (the agent loop calls
:meth:`Executor.run` from a worker thread while the kernel's event loop waits). Output goes through
:mod:`._capture`; rich displays are passed to the notebook and summarised for the model; the value
of a final bare expression is kept; an exception becomes a short traceback that shows the agent's
own lines. Nothing raised by agent code escapes :meth:`Executor.run`, not even ``SystemExit``
(``exit()`` ends the step, never the kernel) or ``KeyboardInterrupt`` (reported as ``interrupted``).

Stopping a run (timeouts, the stop button) is :mod:`._stop`'s, with its guarantees stated
exactly; the short traceback the model reads is :mod:`._tracebacks`'s.

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
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .._agent_code import AGENT_FILENAME_PREFIX as _FILENAME_PREFIX
from ._capture import Capture, TeeStream
from ._fd_capture import FdCapture, prepare
from ._held import load_held
from ._manifest import bounded_repr
from ._outputs import MAX_KEPT_CHARS, OutputNames, kept_line
from ._stop import (
    _ACTIVE,
    _ACTIVE_LOCK,
    StepTimeout,
    _resolve_async_exc,
    _RunState,
    interrupt_thread,
)
from ._stop import _set_async_exc as _set_async_exc
from ._tracebacks import _format_error_safely
from ._tracebacks import format_error as format_error

__all__ = ["ExecutionResult", "Executor", "StepTimeout", "interrupt_thread"]

_step_ids = itertools.count(1)
_RUN_LOCK = threading.RLock()


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
    """Runs code in one namespace; :mod:`._stop` says what stopping guarantees."""

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
        load_held(self.namespace)  # agent-made bytes from strict mode: loaded as agent code
        value = _execute(body, expr, self.namespace)
        if value is None:
            return None
        text = bounded_repr(value, self.value_chars)
        if echo and tap is not None:
            from IPython.display import display

            tap.summarise = False  # the model already gets "Out: ..."
            display(value)
        return text
