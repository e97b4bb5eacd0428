"""The seam between the security layer and whoever decides: ``ApprovalChannel``.

The security layer builds an ``ApprovalRequest`` when the policy says ``ask`` and calls
``channel.decide(request, cancelled)``. It calls it on a helper thread of its own (not the agent's
thread, so the channel's own file and socket use is not checked against the agent's policy)
while the agent's thread waits. ``decide`` blocks until someone answers and must return
``Decision.CANCELLED`` promptly once ``cancelled`` is set (the user pressed stop).

A channel that can also take a free-text answer (for ``human.ask``) implements ``answer``; one
that cannot gets a yes/no question through ``decide`` instead.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["AnswerChannel", "ApprovalChannel", "ApprovalRequest", "Decision"]


class Decision(enum.Enum):
    """How a request was decided."""

    APPROVE_ONCE = "approve_once"
    """Allow this one operation; the grant is consumed when the operation succeeds."""
    APPROVE_SESSION = "approve_session"
    """Allow this capability for the rest of the session."""
    DENY = "deny"
    EXPIRED = "expired"
    """Nobody answered in time: the request's ``on_timeout`` decides (deny unless it says allow)."""
    CANCELLED = "cancelled"
    """The turn was stopped while waiting (counts as deny)."""

    @property
    def approved(self) -> bool:
        return self in (Decision.APPROVE_ONCE, Decision.APPROVE_SESSION)


@dataclass(frozen=True)
class ApprovalRequest:
    """One question to a person: may the agent do this?"""

    id: str
    capability: str
    """The exact capability, e.g. ``fs.write:/home/me/out.csv`` or ``shell:/usr/bin/git``."""
    summary: str
    """One human sentence: "write 1,204 bytes to /home/me/out.csv"."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Facts for the approver: path, bytes, sha256, preview, argv, cwd, url, method, ..."""
    code_line: str | None = None
    """The line of agent code that asked, when known (display only: agent code can lie)."""
    created_at: float = 0.0
    timeout: float | None = None
    """Seconds to wait for a person (the policy's ``ask ... timeout=N``); None waits until
    someone answers or the turn is stopped. Past it the channel returns ``Decision.EXPIRED``."""
    on_timeout: str = "deny"
    """What the security layer does with an expired request: ``deny``, or ``allow`` when the
    policy says so explicitly. Channels only show it; the security layer applies it."""


@runtime_checkable
class ApprovalChannel(Protocol):
    """Something that can decide approval requests. Implementations need not inherit this."""

    def decide(self, request: ApprovalRequest, cancelled: threading.Event) -> Decision:
        """Block until decided; return ``Decision.CANCELLED`` soon after ``cancelled`` is set."""
        ...


@runtime_checkable
class AnswerChannel(Protocol):
    """A channel that can also collect a free-text answer (``human.ask``)."""

    def answer(self, request: ApprovalRequest, cancelled: threading.Event) -> str | None:
        """The person's answer to ``request.summary``, or None (no answer / cancelled)."""
        ...
