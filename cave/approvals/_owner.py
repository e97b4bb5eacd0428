"""Who waits for an approval request, and whether that process is still running.

A request is owned by the kernel that asked. When that kernel dies (a crash, a restart), nobody
will ever act on the decision, so the queue expires the request rather than leave it pending
forever. That needs a liveness test that a terminal sharing only the session directory can run.

What :meth:`Owner.alive` can tell, exactly: on the same host, whether a process with this pid
exists *and* started at the recorded time (``/proc/PID/stat`` field 22, Linux), so a pid reused by
another process does not look alive and a zombie counts as dead. Where ``/proc`` is unavailable the
start time is '' and only the pid is checked. On another host it answers None: it cannot tell, and
the queue leaves such a request alone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

__all__ = ["Owner"]


@dataclass(frozen=True)
class Owner:
    """The process waiting for a request: enough to tell later whether it is still running."""

    host: str
    pid: int
    started: str
    """Process start time as the kernel counts it (``/proc/PID/stat`` field 22), or ''."""

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), _start_time(os.getpid()))

    @classmethod
    def parse(cls, text: str) -> Owner:
        host, _, rest = text.rpartition("@")
        pid, _, started = rest.partition(":")
        return cls(host, int(pid) if pid.isdigit() else -1, started)

    def __str__(self) -> str:
        return f"{self.host}@{self.pid}:{self.started}"

    def alive(self) -> bool | None:
        """True/False on this host; None when the owner is on another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        if self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        if not self.started:
            return True
        return _start_time(self.pid) == self.started


def _start_time(pid: int) -> str:
    """Start time of ``pid`` (Linux), '' where unknown. A zombie counts as not started."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return "dead"
    return fields[19] if len(fields) > 19 else ""
