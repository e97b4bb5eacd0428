"""Save and restore a whole `Session`: the operations, with their audit records and progress bars.

What is saved and how it is put back is `_session_state`; where it goes is `_session_store`.
`save` records ``checkpoint.save`` and `restore` records ``checkpoint.restore`` in the session's
audit log (and ``checkpoint.tracking_off`` when write tracking was found wrong and turned
off, also printed in the cell); transfers of at least `PROGRESS_MIN_BYTES` show a ``tqdm.auto``
bar in the calling cell.
"""

from __future__ import annotations

import contextvars
import sys
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from ._protocol import CheckpointInfo, Restored
from ._session_state import RestoreReport, apply, capture, skip_names
from ._session_store import audit, open_store
from ._verify_tracking import WriteTrackingOff, take_failure

if TYPE_CHECKING:
    from .._session import Session
    from ._store import SessionStore

__all__ = ["PROGRESS_MIN_BYTES", "restore", "save"]

PROGRESS_MIN_BYTES = 64 << 20
"""Saves and restores smaller than this show no progress bar (a bar per small turn is noise)."""


class _Bar:
    """A ``tqdm.auto`` bar that appears only once a transfer is large enough to deserve one.

    The store calls it from its hashing threads (serialised); the bar is created and updated in a
    copy of the caller's context, so in a kernel it lands in the calling cell.
    """

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc = desc
        self.enabled = enabled
        self._bar: Any = None
        self._context = contextvars.copy_context()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < PROGRESS_MIN_BYTES:
            return
        self._context.run(self._update, done, total)

    def _update(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=self.desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False,
            )
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._context.run(self._bar.close)
            self._bar = None


def save(
    session: Session,
    name: str | None = None,
    *,
    progress: bool = True,
    auto: bool = False,
    store: SessionStore | None = None,
) -> CheckpointInfo:
    """Checkpoint ``session`` as ``name`` (None: ``auto-<seq>``); audited as ``checkpoint.save``."""
    t0 = time.perf_counter()
    namespace, state = capture(session)
    store = store or open_store(session)
    tracking_off = take_failure()
    if tracking_off is not None:  # a background verification after an earlier save failed
        print(f"[cave] {WriteTrackingOff(tracking_off)}", file=sys.stderr)
        audit(session, "checkpoint.tracking_off", reason=tracking_off)
    bar = _Bar("checkpoint save", progress)
    try:
        info = store.save(name, namespace, state, progress=bar, skip=skip_names(session))
    finally:
        bar.close()
    audit(
        session,
        "checkpoint.save",
        name=info.name,
        auto=auto,
        store=store.url,
        objects=info.objects,
        size=info.size,
        written=info.written,
        blobs_written=info.blobs_written,
        unpicklable=[p.name for p in info.unpicklable],
        messages=len(state["history"]),
        approvals=[a["id"] for a in state["approvals"]],
        duration_s=round(time.perf_counter() - t0, 6),
    )
    return info


def restore(
    session: Session,
    name_or_restored: str | Restored,
    *,
    progress: bool = True,
    store: SessionStore | None = None,
) -> RestoreReport:
    """Put checkpoint ``name_or_restored`` back into ``session``: all of it, or nothing.

    Refused while a turn runs. ``name_or_restored`` may be a `Restored` that was loaded elsewhere;
    its objects are then copied into the runtime (functions keep the globals they were loaded
    with, so load with ``into=session.runtime.namespace`` where you can).
    """
    t0 = time.perf_counter()

    def load(name: str, into: MutableMapping[str, Any]) -> Restored:
        nonlocal store
        store = store or open_store(session)
        bar = _Bar("checkpoint restore", progress)
        try:
            return store.load(name, into=into, progress=bar)
        finally:
            bar.close()

    report, audit_head = apply(session, name_or_restored, load)
    audit(
        session,
        "checkpoint.restore",
        name=report.name,
        store=store.url if store is not None else None,
        objects=len(report.objects),
        problems=[f"{p.name}: {p.reason}" for p in report.problems],
        kept=list(report.kept),
        messages=report.messages,
        grants=report.grants,
        approvals=[{"id": new, "was": old} for new, old, _c in report.approvals],
        checkpoint_audit_head=audit_head,
        duration_s=round(time.perf_counter() - t0, 6),
    )
    return report
