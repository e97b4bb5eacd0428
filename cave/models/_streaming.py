"""A streaming model call run in a worker thread and relayed to the caller's thread.

Both HTTP providers stream the same way: the request runs in a daemon worker that feeds a queue,
and ``query`` reads the queue in the caller's thread (so ``on_text`` runs there). ``cancel()``,
from any thread, marks the call, wakes the reader at once (it raises ``TurnInterrupted``) and shuts
the stream's socket down so the worker ends too. A worker inside a connect (or an SDK retry
back-off) is left to finish it; it exits when that returns.

Reading in the caller's thread and closing the stream from the canceller would be simpler, but
nothing can interrupt a retry back-off sleep, and ``query`` must return promptly.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._errors import TurnInterrupted
from ._protocol import TextSink

R = TypeVar("R")


class StreamingCall:
    """One in-flight query: the queue from the worker, the cancel flag, the stream to wake.

    The worker puts ``("text", str)`` for each delta and ends with ``("done", value)``; an
    exception it raises reaches the reader as ``("error", exc)``.
    """

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.cancelled = threading.Event()
        self.answered = False
        """Set by a worker once the response's headers arrived (a later break is mid-reply)."""
        self._stream: Any = None
        self._lock = threading.Lock()

    def attach(self, stream: Any) -> bool:
        """Remember the open stream (``.response`` and ``close()``); False if already cancelled."""
        with self._lock:
            self._stream = stream
            return not self.cancelled.is_set()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled.set()
            stream = self._stream
        self.events.put(("cancelled", None))
        if stream is not None:
            wake_reader(stream)


def wake_reader(stream: Any) -> None:
    """Make a worker blocked reading ``stream`` return now.

    Closing an httpx response from another thread does not interrupt a blocked ``recv`` (measured:
    the worker slept on until the next chunk came). Shutting the socket down does: the read sees
    end-of-file, the worker notices the cancel flag and closes the stream in its own thread. For TLS
    the plain-socket ``shutdown`` is called so the SSL object the worker is using stays untouched
    (only tested over plain HTTP: the tests have no TLS endpoint). Without a reachable socket
    (another transport), fall back to ``close()``.
    """
    import socket

    sock = None
    try:
        network = stream.response.extensions.get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
    except Exception:  # an unusual transport: use the fallback
        sock = None
    try:
        if isinstance(sock, socket.socket):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        else:
            stream.close()
    except Exception:  # already closed, or closing mid-read failed: the cancel flag still holds
        pass


class StreamRelay:
    """Runs one model instance's calls, one at a time; ``cancel`` aborts the latest one."""

    def __init__(self, thread_name: str) -> None:
        """``thread_name``: the worker threads' name (tests wait for it to be gone)."""
        self.thread_name = thread_name
        self._lock = threading.Lock()
        self._call: StreamingCall | None = None

    def run(
        self,
        work: Callable[[StreamingCall], None],
        on_text: TextSink | None,
        done: Callable[[Any], R],
        translate: Callable[[BaseException], BaseException] | None = None,
    ) -> R:
        """Run ``work(call)`` in a worker, relay its text to ``on_text``, return ``done(value)``.

        An exception from ``work`` is raised here: as it is, or ``translate(exc) from exc``. On
        the way out a worker that is still alive (interrupted, or ``on_text`` raised) is cancelled.
        """
        call = StreamingCall()
        with self._lock:
            self._call = call
        worker = threading.Thread(target=_work, args=(work, call), name=self.thread_name,
                                  daemon=True)
        worker.start()
        try:
            while True:
                kind, value = call.events.get()
                if call.cancelled.is_set():
                    raise TurnInterrupted(step=0)
                if kind == "text":
                    if on_text is not None:
                        on_text(value)
                elif kind == "done":
                    return done(value)
                elif translate is None:
                    raise value
                else:
                    raise translate(value) from value
        finally:
            with self._lock:
                if self._call is call:
                    self._call = None
            if worker.is_alive():
                call.cancel()

    def cancel(self) -> None:
        """Abort the in-flight ``run`` (from any thread); it raises ``TurnInterrupted(0)``."""
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()


def _work(work: Callable[[StreamingCall], None], call: StreamingCall) -> None:
    try:
        work(call)
    except BaseException as exc:  # handed to the caller's thread, which decides
        call.events.put(("error", exc))
