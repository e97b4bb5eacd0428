"""Pending approval requests across a checkpoint: saved, submitted again, honoured as grants.

A save records the requests this process is waiting on. A restore submits them again to the
restoring session's queue, pending, under new ids (details name the old id). Nothing waits for
such a request, so deciding one runs nothing: at the start of the next turn (and before each
save) an approval becomes a grant (``once`` or ``session``, as chosen), so the agent's next
attempt at that capability is allowed without asking. A request's policy timeout restarts at
restore; free-text questions (``human:``) and other kernels' requests are not carried.
"""

from __future__ import annotations

import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from ._session_store import audit

if TYPE_CHECKING:
    from .._session import Session

__all__ = ["pending_approvals", "reconcile_approvals", "resubmit"]

_restored_requests: weakref.WeakKeyDictionary[Session, dict[str, str]] = (
    weakref.WeakKeyDictionary()
)


def _queue(session: Session) -> Any:
    return getattr(session.approvals, "queue", None)


def pending_approvals(session: Session) -> list[dict[str, Any]]:
    """Requests this process is waiting on (a subshell save during a turn sees them)."""
    queue = _queue(session)
    if queue is None:
        return []
    me = str(queue.owner)
    out = []
    for r in queue.pending():
        if r.owner != me or r.capability.startswith("human:"):
            continue  # another kernel's, or a free-text question nobody will wait for after restore
        timeout = None if r.deadline is None else max(0.0, r.deadline - r.created_at)
        out.append(
            {
                "id": r.id,
                "capability": r.capability,
                "summary": r.summary,
                "details": dict(r.details),
                "code_line": r.code_line,
                "created_at": r.created_at,
                "timeout": timeout,
            }
        )
    return out


def resubmit(
    session: Session, approvals: list[dict[str, Any]], name: str
) -> list[tuple[str, str, str]]:
    """Submit the checkpoint's pending requests again, pending, owned by this process."""
    queue = _queue(session)
    if queue is None or not approvals:
        return []
    from ..approvals._protocol import ApprovalRequest

    sweep = getattr(session.approvals, "sweep", None)
    if callable(sweep):
        sweep(force=True)  # the saving kernel's own requests expire first, if it is gone
    tracked = _restored_requests.setdefault(session, {})
    out = []
    for a in approvals:
        details = {**dict(a.get("details") or {}), "restored_from": a.get("id"), "checkpoint": name}
        request = ApprovalRequest(
            id=uuid.uuid4().hex[:8],
            capability=str(a["capability"]),
            summary=str(a["summary"]),
            details=details,
            code_line=a.get("code_line"),
            created_at=time.time(),
        )
        record = queue.submit(request, timeout=a.get("timeout"))
        tracked[record.id] = record.capability
        out.append((record.id, str(a.get("id")), record.capability))
        audit(
            session,
            "approval.requested",
            id=record.id,
            capability=record.capability,
            summary=record.summary,
            state=record.state,
            restored_from=a.get("id"),
            checkpoint=name,
        )
    if _reconcile_hook not in session.before_turn:
        session.before_turn.append(_reconcile_hook)
    return out


def reconcile_approvals(session: Session) -> int:
    """Turn decided requests that came back from a checkpoint into grants; returns how many.

    Runs at the start of each turn (registered by `resubmit`) and before each save. Nothing waits
    for such a request, so an approval cannot resume code: it only lets the next attempt through.
    """
    tracked = _restored_requests.get(session)
    queue = _queue(session)
    security = session.security
    if not tracked or queue is None or security is None:
        return 0
    from .._errors import ApprovalError

    grants = []
    for rid in list(tracked):
        try:
            record = queue.get(rid)
        except ApprovalError:  # the queue was replaced or cleared: nothing left to honour
            del tracked[rid]
            continue
        if record.pending:
            continue
        del tracked[rid]
        if record.state == "approved" and record.scope in ("once", "session"):
            grants.append(
                {
                    "id": uuid.uuid4().hex[:12],
                    "capability": record.capability,
                    "scope": record.scope,
                    "granted_at": record.decided_at or time.time(),
                    "request_id": record.id,
                }
            )
    if grants:
        snapshot = security.snapshot()
        snapshot["grants"] = [*snapshot.get("grants", ()), *grants]
        security.restore(snapshot)
        for g in grants:
            audit(
                session,
                "grant",
                capability=g["capability"],
                scope=g["scope"],
                grant=g["id"],
                request=g["request_id"],
                via="approval of a request restored from a checkpoint",
            )
    return len(grants)


def _reconcile_hook(session: Session) -> None:
    reconcile_approvals(session)
