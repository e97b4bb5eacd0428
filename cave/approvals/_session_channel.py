"""The approval channel of a session: its queue in the session directory, its audit log.

Whoever builds a session hands it this (the kernel passes its own kernel object so widgets and
stdin prompts work); the session itself never reaches into the kernel's glue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._channel import KernelApprovalChannel

__all__ = ["make_channel"]


class _SessionAudit:
    """Forwards to ``session.audit`` as it is *when recording* (it is built after us)."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def record(self, kind: str, /, **fields: Any) -> None:
        audit = getattr(self.session, "audit", None)
        if audit is None and hasattr(self.session, "ensure_security"):
            self.session.ensure_security()  # `%approvals` before the first turn
            audit = getattr(self.session, "audit", None)
        if audit is None:
            raise RuntimeError("this session has no audit log; the record was not written")
        audit.record(kind, **fields)


def make_channel(session: Any, kernel: Any = None) -> KernelApprovalChannel:
    """The channel for ``session``: its queue in ``session.directory``, its audit log."""
    from ._channel import KernelApprovalChannel
    from ._queue import ApprovalQueue

    return KernelApprovalChannel(
        ApprovalQueue.in_directory(session.directory),
        kernel=kernel,
        audit=_SessionAudit(session),
    )
