"""``StrictExecutor``: the runtime's executor when strict mode is on. Agent code runs in the worker.

It has the in-process executor's interface (``run`` -> ``ExecutionResult``, ``interrupt``), so the
agent loop is unchanged. The kernel's ``AgentRuntime.namespace`` stays authoritative: before each
step, what changed there since the last step (a new ``inject``, a rebinding, a deletion, an in-place
change found by fingerprint) is sent to the worker; after it, what the step changed comes back and
is bound there (``_namesync``). Large buffers travel once, into shared memory (copied from the
moment of ``inject``, ``_precopy``), and both namespaces then hold objects built on the same
memory: the kernel rebinds an injected object to its shared copy at the first step after
``inject`` (the user's own variable stays a separate object; lists, dicts and sets the agent
changes are also merged back into the object the user injected).

While the step runs, this thread pumps the worker's stdout/stderr pipes into the step's
``Capture`` and services broker requests inline (``_broker``), so approvals look and behave as in
guard mode. A stop or timeout sends SIGINT to the worker's group, then SIGKILL after
``grace_s``; a timeout that falls while a request is served (an approval nobody answers, a
brokered process) also cancels that request, as the stop button does (``_DeadlineWatch``).
A worker that dies (segfault, ``os._exit``, out of memory, seccomp kill) is reaped;
the kernel's namespace keeps what it had before the step, the model is told, and the next step
starts a new worker from that namespace (shared memory re-sent by descriptor, not copied).
"""

from __future__ import annotations

import codecs
import os
import re
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..runtime._capture import Capture
from ..runtime._executor import _FILENAME_PREFIX, ExecutionResult, _step_ids
from ._broker import Broker
from ._channel import ChannelClosed
from ._namesync import NamespaceSync
from ._precopy import Precopy
from ._process import StrictSettings, WorkerProcess, _StartFailed, describe_exit
from ._sharing import Regions, WorkerOnly
from ._unpickle import safe_loads

__all__ = ["StrictExecutor"]

_CANCEL_REPEAT_S = 0.1
"""After a step's deadline, how often a request still in flight is cancelled again."""


class StrictExecutor(NamespaceSync):
    """Runs agent code in a confined worker process; see the module docstring."""

    def __init__(self, runtime: Any, *, security: Any, workspace: Path,
                 child_env: Any, settings: StrictSettings | None = None,
                 head_chars: int = 8000, tail_chars: int = 8000, echo_chars: int = 200_000,
                 value_chars: int = 2000) -> None:
        self.runtime = runtime
        self.namespace: dict[str, Any] = runtime.namespace
        self.workspace = workspace
        self.settings = settings or StrictSettings()
        self._security = security
        self._child_env = child_env
        self.broker = Broker(security, child_env)
        self.head_chars, self.tail_chars = head_chars, tail_chars
        self.echo_chars, self.value_chars = echo_chars, value_chars
        self.regions = Regions("k", keep_fds=True)
        self.regions.precopy = Precopy("k")
        Precopy.prepare()  # at the switch to strict mode, not at the first inject
        self.worker: WorkerProcess | None = None
        self._synced: dict[str, tuple[int, bytes | None, frozenset[str]]] = {}
        self._worker_regions: set[str] = set()
        self._modules: dict[str, str] = {}
        self._notes: list[str] = []
        self._lock = threading.RLock()
        self._stop_at: float | None = None
        self._stopped_by: str | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.spawned = 0
        self._fresh = False
        self._closed = False
        self._watch = _DeadlineWatch(self, None)

    # -- the executor interface ---------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._lock_owned()

    def _lock_owned(self) -> bool:
        got = self._lock.acquire(blocking=False)
        if got:
            self._lock.release()
        return not got

    def interrupt(self) -> bool:
        """The stop button: SIGINT to the worker now, SIGKILL after the grace period (and a
        brokered process the step is waiting for is killed)."""
        stopped = self._stop("interrupted")
        self.broker.cancel_running()
        return stopped

    def _stop(self, why: str) -> bool:
        worker = self.worker
        if worker is None or self._stop_at is not None:
            return False
        self._stopped_by = why
        self._stop_at = time.monotonic()
        worker.signal(signal.SIGINT)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        return True

    def prepare(self, name: str, obj: Any) -> None:
        """``cave.inject`` was called: start copying ``obj``'s large buffers into shared memory
        now, so the first step waits only for what is left (``_precopy``)."""
        if not self._closed:
            try:
                self.regions.precopy.start(obj, name)
            except Exception:  # an optimisation: the step copies as before (fails safe)
                pass

    def close(self) -> None:
        """End the worker and release shared memory (switching back to guard mode)."""
        self._closed = True
        self.regions.precopy.discard()
        with self._lock:
            if self.worker is not None:
                self.worker.kill()
                self.worker = None
            self.regions.close()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def run(self, code: str, *, timeout: float | None = None, echo: bool = True,
            label: str = "step") -> ExecutionResult:
        safe_label = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:40] or "step"
        filename = f"{_FILENAME_PREFIX}{safe_label}-{next(_step_ids)}>"
        capture = Capture(echo=echo, head_chars=self.head_chars, tail_chars=self.tail_chars,
                          echo_chars=self.echo_chars)
        start = time.perf_counter()
        with self._lock:
            self._stop_at, self._stopped_by = None, None
            self._drain_wake()
            outcome = self._run_locked(code, filename, echo, timeout, capture)
        duration = time.perf_counter() - start
        error = outcome.get("error")
        timed_out = self._stopped_by == "timeout"
        interrupted = self._stopped_by == "interrupted" or (
            error is not None and "KeyboardInterrupt" in error and not timed_out)
        if timed_out and error is not None and "KeyboardInterrupt" in error:
            error = f"StepTimeout: the step ran past its time limit ({timeout} s)"
        notes = self._take_notes()
        if notes:
            capture.note("\n".join(notes) + "\n")
        return ExecutionResult(
            output=capture.text(),
            value_repr=None if error is not None else outcome.get("value_repr"),
            error=error,
            output_chars=capture.total,
            duration_s=duration,
            timed_out=timed_out,
            interrupted=interrupted and not timed_out,
        )

    # -- one step -----------------------------------------------------------------------------
    def _run_locked(self, code: str, filename: str, echo: bool, timeout: float | None,
                    capture: Capture) -> dict[str, Any]:
        try:
            worker = self._ensure_worker()
        except _StartFailed as exc:
            return {"error": f"StrictModeError: the strict-mode worker could not start: {exc}"}
        message, fds = self._sync()
        message.update(op="run", code=code, filename=filename, echo=echo,
                       value_chars=self.value_chars)
        try:
            worker.channel.send(message, fds)
        except (ChannelClosed, OSError):
            return self._crashed(worker, capture)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._watch = _DeadlineWatch(self, deadline)
        self.broker.deadline = deadline
        try:
            return self._serve(worker, capture, deadline, echo)
        finally:
            self.broker.release()
            self.broker.deadline = None
            self._watch.close()

    def _serve(self, worker: WorkerProcess, capture: Capture, deadline: float | None,
               echo: bool) -> dict[str, Any]:
        out, err = worker.proc.stdout, worker.proc.stderr
        assert out is not None and err is not None
        decoders = {out.fileno(): codecs.getincrementaldecoder("utf-8")("replace"),
                    err.fileno(): codecs.getincrementaldecoder("utf-8")("replace")}
        targets = {out.fileno(): sys.stdout, err.fileno(): sys.stderr}
        pipes = [out.fileno(), err.fileno()]
        chan = worker.channel.fileno()
        while True:
            wait = self._wait_time(deadline)
            ready, _, _ = select.select([chan, self._wake_r, *pipes], [], [], wait)
            if set(ready) - {chan} or self._stop_at is not None or (
                    deadline is not None and time.monotonic() >= deadline):
                self.broker.release()  # none of what follows is agent code
            if self._wake_r in ready:
                self._drain_wake()
            for fd in [p for p in pipes if p in ready]:
                if not self._pump(fd, decoders[fd], targets[fd], capture):
                    pipes.remove(fd)
            if deadline is not None and time.monotonic() >= deadline:
                self._stop("timeout")
            if self._stop_at is not None and time.monotonic() - self._stop_at >= \
                    self.settings.grace_s:
                worker.signal(signal.SIGKILL)
            if chan not in ready:
                continue
            try:
                message, fds = worker.channel.recv(safe_loads)
            except (ChannelClosed, OSError, ValueError, EOFError):
                self.broker.release()
                return self._crashed(worker, capture)
            except Exception as exc:  # a message the kernel refuses to load: end that worker
                self.broker.release()
                self._note(f"[strict mode] the worker sent a message the kernel refused ({exc}); "
                           "it was stopped.")
                return self._crashed(worker, capture)
            op = message.get("op")
            if op == "req":
                for fd in fds:
                    os.close(fd)
                self._watch.arm()  # served on this thread: the deadline check needs another
                reply, reply_fds = self.broker.handle(message)
                try:
                    worker.channel.send(reply, reply_fds)
                except (ChannelClosed, OSError):
                    self.broker.release()
                    return self._crashed(worker, capture)
                finally:
                    for fd in reply_fds:
                        os.close(fd)
            elif op == "done":
                self.broker.release()
                self._drain_pipes(decoders, targets, capture)
                self._apply(message, fds)
                if echo and message.get("value_repr") is not None and not message.get("error"):
                    self._show_value(message)
                return message
            else:
                for fd in fds:
                    os.close(fd)

    def _wait_time(self, deadline: float | None) -> float | None:
        now = time.monotonic()
        waits = []
        if deadline is not None:
            waits.append(max(0.0, deadline - now))
        if self._stop_at is not None:
            waits.append(max(0.0, self._stop_at + self.settings.grace_s - now))
        return min(waits) if waits else None

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    @staticmethod
    def _pump(fd: int, decoder: Any, target: Any, capture: Capture) -> bool:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        text = decoder.decode(data)
        if text:
            capture.write(text, target)
        return True

    def _drain_pipes(self, decoders: dict[int, Any], targets: dict[int, Any],
                     capture: Capture) -> None:
        """Output the worker flushed before it reported ``done`` is already in the pipes."""
        for fd in decoders:
            while True:
                ready, _, _ = select.select([fd], [], [], 0)
                if not ready or not self._pump(fd, decoders[fd], targets[fd], capture):
                    break

    def _show_value(self, message: dict[str, Any]) -> None:
        """Show the step's value as text only.

        Never as HTML: a notebook runs script in HTML output the kernel sends, and script in the
        user's JupyterLab can run code in the kernel, so HTML written by confined code would be
        a way out of the confinement. (A DataFrame therefore shows as text in strict mode.)
        """
        ipython = sys.modules.get("IPython")
        if ipython is None or ipython.get_ipython() is None:
            return
        from IPython.display import display

        display({"text/plain": str(message["value_repr"])}, raw=True)

    # -- worker life --------------------------------------------------------------------------
    def _ensure_worker(self) -> WorkerProcess:
        worker = self.worker
        if worker is not None and worker.alive():
            return worker
        if worker is not None:
            self._reap(worker)
        env = dict(self._child_env())
        self.worker = WorkerProcess(cwd=self.workspace, env=env,
                                    primitives=tuple(self.runtime.primitives),
                                    settings=self.settings)
        self.spawned += 1
        self._synced.clear()  # the new worker gets the whole namespace (shared memory by fd)
        self._worker_regions.clear()
        self._fresh = True  # and re-imports the modules the old one had bound
        return self.worker

    def _reap(self, worker: WorkerProcess) -> int | None:
        try:
            code = worker.kill()
        except Exception:
            code = None
        if self.worker is worker:
            self.worker = None
        lost = [n for n, v in self.namespace.items() if isinstance(v, WorkerOnly)]
        for name in lost:
            del self.namespace[name]
        if lost:
            self._note("[strict mode] these lived only in the worker and are gone with it: "
                       + ", ".join(lost))
        return code

    def _crashed(self, worker: WorkerProcess, capture: Capture) -> dict[str, Any]:
        # Kill the whole group first: the leader may be alive (a protocol violation) and a fork
        # of it may hold the pipes open, so never read them to end-of-file.
        worker.signal(signal.SIGKILL)
        try:
            worker.proc.wait(timeout=10)
        except Exception:
            pass
        for stream, target in ((worker.proc.stdout, sys.stdout), (worker.proc.stderr, sys.stderr)):
            if stream is None:
                continue
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            for _ in range(64):  # at most 4 MB of what was left in the pipe
                ready, _, _ = select.select([stream.fileno()], [], [], 0)
                if not ready or not self._pump(stream.fileno(), decoder, target, capture):
                    break
        code = self._reap(worker)
        if self._stopped_by is not None:
            kind = "StepTimeout" if self._stopped_by == "timeout" else "KeyboardInterrupt"
            return {"error": f"{kind}: the worker was stopped and ended ({describe_exit(code)})."
                             " Variables from before this step are kept; a new worker starts at"
                             " the next step."}
        return {"error": f"StrictWorkerCrashed: the agent's worker process ended: "
                         f"{describe_exit(code)}. The kernel and the variables from before this "
                         "step are intact (this step's changes are lost, except in-place edits "
                         "of shared arrays); a new worker starts at the next step."}

    # -- notes for the model ---------------------------------------------------------------------
    def _note(self, text: str) -> None:
        self._notes.append(text)

    def _take_notes(self) -> list[str]:
        notes, self._notes = self._notes, []
        return notes


class _DeadlineWatch:
    """Ends a brokered request when the step's time runs out, as the stop button does.

    Requests are served on the thread that waits for the step (one may wait for a person's
    approval, a brokered process or a connect), so the deadline check in ``_serve`` cannot run
    meanwhile. At a step's first request (``arm``) this starts one thread for the step: at the
    deadline it stops the worker (``_stop``: SIGINT, then SIGKILL after the grace period) and
    cancels what a request waits for: a pending approval (``cancel_pending``, which the stop
    button calls too) and a brokered process (the broker bounds a connect by the deadline
    itself). It repeats the cancel until the step ends, so an approval that registers just after
    the first cancel is cancelled too (guard mode re-fires its ``StepTimeout`` for the same
    reason). Steps without requests, or without a deadline, start no thread.
    """

    def __init__(self, executor: StrictExecutor, deadline: float | None) -> None:
        self._executor = executor
        self._deadline = deadline
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        if self._thread is None and self._deadline is not None:
            self._thread = threading.Thread(target=self._watch, name="cave-strict-timeout",
                                            daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        assert self._deadline is not None
        if self._finished.wait(max(0.0, self._deadline - time.monotonic())):
            return
        executor = self._executor
        executor._stop("timeout")
        while True:
            security = executor._security()
            if security is not None:
                try:
                    security.cancel_pending()
                except Exception:
                    pass
            executor.broker.cancel_running()
            if self._finished.wait(_CANCEL_REPEAT_S):
                return

    def close(self) -> None:
        self._finished.set()
        if self._thread is not None:
            self._thread.join()
