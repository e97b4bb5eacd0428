"""Two simple channels: a console prompt, and one that denies everything without asking.

``ConsoleChannel`` writes the request to a text stream and reads the answer from another (stdin
and stderr by default), for ``cave run`` and terminals. While it waits it polls the input with
``select`` in short slices, so a ``cancelled`` event ends the wait promptly; streams without a
file descriptor (``io.StringIO`` in tests) are read directly.

``AutoDenyChannel`` is for unattended runs: every ``ask`` becomes a denial, and ``human.ask``
gets no answer.
"""

from __future__ import annotations

import select
import threading
from typing import IO

from ._protocol import ApprovalRequest, Decision

__all__ = ["AutoDenyChannel", "ConsoleChannel"]

_ANSWERS = {
    "o": Decision.APPROVE_ONCE,
    "once": Decision.APPROVE_ONCE,
    "y": Decision.APPROVE_ONCE,
    "yes": Decision.APPROVE_ONCE,
    "s": Decision.APPROVE_SESSION,
    "session": Decision.APPROVE_SESSION,
    "d": Decision.DENY,
    "deny": Decision.DENY,
    "n": Decision.DENY,
    "no": Decision.DENY,
}


class AutoDenyChannel:
    """Denies every request at once (and records nothing itself: the engine audits)."""

    def __init__(self, reason: str = "no person is watching this session (auto-deny)") -> None:
        self.reason = reason
        self.requests: list[ApprovalRequest] = []
        """What was asked, in order (handy in tests and logs)."""

    def decide(self, request: ApprovalRequest, cancelled: threading.Event) -> Decision:
        self.requests.append(request)
        return Decision.DENY

    def answer(self, request: ApprovalRequest, cancelled: threading.Event) -> str | None:
        self.requests.append(request)
        return None


class ConsoleChannel:
    """Asks on a text console: ``[o]nce / [s]ession / [d]eny``. Thread-safe (one at a time)."""

    def __init__(
        self,
        input: IO[str] | None = None,
        output: IO[str] | None = None,
        *,
        poll_interval: float = 0.1,
        max_tries: int = 3,
    ) -> None:
        import sys

        self.input = input if input is not None else sys.stdin
        self.output = output if output is not None else sys.stderr
        self.poll_interval = poll_interval
        self.max_tries = max_tries
        self._lock = threading.Lock()

    def decide(self, request: ApprovalRequest, cancelled: threading.Event) -> Decision:
        with self._lock:
            self._show(request)
            for _ in range(self.max_tries):
                self._write(f"Approve {request.id}? [o]nce / [s]ession / [d]eny: ")
                line = self._readline(cancelled)
                if line is None:
                    self._write("\n(cancelled)\n")
                    return Decision.CANCELLED
                if line == "":  # EOF: nobody can answer
                    return Decision.DENY
                decision = _ANSWERS.get(line.strip().lower())
                if decision is not None:
                    return decision
                self._write("Please answer o, s or d.\n")
            return Decision.DENY

    def answer(self, request: ApprovalRequest, cancelled: threading.Event) -> str | None:
        with self._lock:
            self._write(f"\n[cave] the agent asks: {request.summary}\n> ")
            line = self._readline(cancelled)
            if not line:
                return None
            return line.rstrip("\n")

    def _show(self, request: ApprovalRequest) -> None:
        lines = [f"\n[cave] approval {request.id}: {request.capability}", f"  {request.summary}"]
        for key, value in request.details.items():
            text = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            if len(text) > 500:
                text = text[:500] + " [...]"
            lines.append(f"  {key}: {text}")
        if request.code_line:
            lines.append(f"  asked by: {request.code_line.strip()}")
        self._write("\n".join(lines) + "\n")

    def _write(self, text: str) -> None:
        try:
            self.output.write(text)
            self.output.flush()
        except (OSError, ValueError):
            pass

    def _readline(self, cancelled: threading.Event) -> str | None:
        """A line ('' at EOF), or None when cancelled first."""
        try:
            fd = self.input.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        if fd is None:
            return None if cancelled.is_set() else self.input.readline()
        while not cancelled.is_set():
            ready, _, _ = select.select([fd], [], [], self.poll_interval)
            if ready:
                return self.input.readline()
        return None
