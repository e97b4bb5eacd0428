"""Stopping a run: asynchronous exceptions, the watchdog and the disarm protocol.

Apart from the executor because it is one mechanism with its own guarantees, stated exactly:

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
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["StepTimeout", "interrupt_thread"]

_ACTIVE: dict[int, _RunState] = {}
"""The run each thread is executing now (what :func:`interrupt_thread` may stop)."""
_ACTIVE_LOCK = threading.Lock()


class StepTimeout(BaseException):
    """Raised inside agent code when its step runs past its time limit.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception`` in agent code
    does not swallow it. It never escapes :meth:`Executor.run`; the result says ``timed_out``.
    """

    def __init__(self, *args: object) -> None:
        # PyThreadState_SetAsyncExc instantiates the class without arguments.
        super().__init__(*(args or ("the step ran past its time limit",)))


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


def _raise_in(thread_id: int, exc: type[BaseException]) -> None:
    """Schedule ``exc`` in another thread once no thread is being started.

    CPython (3.11 at least) gives a new thread's state the *starting* thread's id until the new
    thread runs, and puts it first in the list ``PyThreadState_SetAsyncExc`` searches: a stop
    fired while the run's thread is in ``Thread.start()`` (the watchdog's, or agent code's) lands
    in the new thread, which dies before it signals that it started, and the run's thread then
    waits for it for good in a lock no exception reaches. A thread stays in ``threading._limbo``
    from before its state exists until after it has its own id, and enters it only under
    ``_active_limbo_lock``, which we hold while we check and fire. Fails safe: a thread that
    stays in limbo (one that died starting) only delays the stop by ``_LIMBO_WAIT_S``, after which
    we fire as before.
    """
    lock = getattr(threading, "_active_limbo_lock", None)
    limbo = getattr(threading, "_limbo", None)
    deadline = time.monotonic() + _LIMBO_WAIT_S
    while lock is not None and limbo is not None and time.monotonic() < deadline:
        with lock:
            if not limbo:
                _set_async_exc(thread_id, exc)
                return
        time.sleep(0.001)  # a thread start takes microseconds
    _set_async_exc(thread_id, exc)


_LIMBO_WAIT_S = 0.2


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
            _raise_in(self.thread_id, exc)
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
                _raise_in(self.thread_id, exc)

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
