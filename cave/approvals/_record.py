"""One approval request as stored: its states, the outcomes a caller may ask for, and its texts.

Apart from the queue (which persists and transitions records) so that the text table
(``_render``) and the queue both build on it without importing each other.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "APPROVED",
    "CANCELLED",
    "DENIED",
    "EXPIRED",
    "MAX_ANSWER_CHARS",
    "ON_TIMEOUT",
    "OUTCOMES",
    "PENDING",
    "QUESTION_PREFIX",
    "STATES",
    "ApprovalRecord",
    "clock",
]

PENDING, APPROVED, DENIED, EXPIRED, CANCELLED = (
    "pending",
    "approved",
    "denied",
    "expired",
    "cancelled",
)
STATES = (PENDING, APPROVED, DENIED, EXPIRED, CANCELLED)
OUTCOMES: dict[str, tuple[str, str | None]] = {
    "approve_once": (APPROVED, "once"),
    "approve_session": (APPROVED, "session"),
    "deny": (DENIED, None),
    "expire": (EXPIRED, None),
    "cancel": (CANCELLED, None),
    "answer": (APPROVED, None),
}
"""What a caller may ask for -> (new state, grant scope)."""

ON_TIMEOUT = ("deny", "allow")
QUESTION_PREFIX = "human:"
"""Capabilities of free-text questions (``human:ask``): answered with text, not approved."""
MAX_ANSWER_CHARS = 16_384
"""Longest answer to a question, in characters (about 4,000 tokens for the model). Longer ones
are refused with a hint (put it in a file in the workspace and answer with its path), never cut:
a silently shortened answer could change its meaning."""


def clock(t: float) -> str:
    """``t`` (seconds since the epoch) as local date and time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@dataclass(frozen=True)
class ApprovalRecord:
    """One row of the queue, as stored."""

    seq: int
    """Position in the queue (FIFO order of submission)."""
    id: str
    capability: str
    summary: str
    details: Mapping[str, Any]
    code_line: str | None
    created_at: float
    deadline: float | None
    """When a pending request times out (policy ``ask`` with ``timeout``), or None."""
    owner: str
    """``host@pid:start`` of the kernel that waits for the decision."""
    state: str
    scope: str | None
    """``once`` or ``session`` for an approval, else None."""
    decided_by: str | None
    channel: str | None
    """Where the decision came from: widget, stdin, control, cli, timeout, interrupt, restart."""
    decided_at: float | None
    reason: str | None
    on_timeout: str | None = None
    """``deny`` or ``allow``: what the security layer does when the deadline passes."""
    answer: str | None = None
    """The text a person answered to a question (``human:ask``), else None."""

    @property
    def pending(self) -> bool:
        return self.state == PENDING

    @property
    def is_question(self) -> bool:
        """A free-text question (``human.ask``), answered with text rather than approved."""
        return self.capability.startswith(QUESTION_PREFIX)

    @property
    def shown_state(self) -> str:
        """The state as people read it: ``answered`` / ``declined`` for questions."""
        if self.is_question and self.state == APPROVED:
            return "answered"
        if self.is_question and self.state == DENIED:
            return "declined"
        return self.state

    def deadline_text(self) -> str | None:
        """'expires at 12:05:00, then deny' for a pending request with a timeout, else None."""
        if self.deadline is None or self.state != PENDING:
            return None
        return f"expires at {clock(self.deadline)}, then {self.on_timeout or 'deny'}"

    def outcome_text(self) -> str:
        """'approved for this session by alice via widget at 12:03:04', 'pending', ..."""
        if self.state == PENDING:
            return PENDING
        what = self.shown_state
        if self.state == APPROVED and not self.is_question:
            what = "approved once" if self.scope == "once" else "approved for this session"
        elif self.state == APPROVED and self.answer is not None:
            what = f"answered ({len(self.answer):,} characters)"
        parts = [what]
        if self.decided_by:
            parts.append(f"by {self.decided_by}")
        if self.channel:
            parts.append(f"via {self.channel}")
        if self.decided_at is not None:
            parts.append(f"at {clock(self.decided_at)}")
        text = " ".join(parts)
        return f"{text} ({self.reason})" if self.reason else text
