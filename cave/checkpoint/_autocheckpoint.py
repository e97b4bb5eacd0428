"""Auto-checkpoints: save the session after each agent turn, keeping the newest few.

A hook on `Session.before_turn`/`after_turn`; the save itself is `_session_io.save`.
"""

from __future__ import annotations

import sys
import weakref
from typing import TYPE_CHECKING

from ._protocol import CheckpointInfo
from ._session_io import save
from ._session_store import audit, open_store

if TYPE_CHECKING:
    from .._session import Session

__all__ = ["AutoCheckpoint", "autocheckpoint_of", "enable_autocheckpoint"]

_autos: weakref.WeakKeyDictionary[Session, AutoCheckpoint] = weakref.WeakKeyDictionary()


class AutoCheckpoint:
    """Saves ``auto-<seq>`` after each turn (in the turn's thread), keeping the newest ``keep``.

    A failure is printed to stderr (the cell) and audited as ``checkpoint.error``; it never
    replaces the turn's result. Unpicklable objects are printed when the set of them changes.
    """

    def __init__(self, keep: int = 20) -> None:
        if keep < 1:
            raise ValueError("autocheckpoint_keep must be at least 1")
        self.keep = keep
        self.enabled = True
        self.last: CheckpointInfo | None = None
        self.last_error: str | None = None
        self._mark: int | None = None
        self._unpicklable: tuple[str, ...] = ()

    def note_turn_start(self, session: Session) -> None:
        self._mark = len(session.history)

    def auto_checkpoint(self, session: Session, completed: bool) -> None:
        if not self.enabled:
            return
        if not completed and self._mark is not None and len(session.history) == self._mark:
            return  # the turn failed before anything happened
        try:
            info = save(session, None, auto=True)
            store = open_store(session)
            if store.prune(self.keep):
                store.gc()
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            print(
                f"[cave] auto-checkpoint failed: {self.last_error}\nThe turn's result is kept; "
                "the previous checkpoints are intact. `%checkpoint save NAME` retries, "
                "`%checkpoint auto off` stops trying.",
                file=sys.stderr,
            )
            try:
                audit(session, "checkpoint.error", auto=True, error=self.last_error[:2000])
            except Exception:
                pass
            return
        self.last, self.last_error = info, None
        names = tuple(p.name for p in info.unpicklable)
        if names and names != self._unpicklable:
            lines = [f"[cave] auto-checkpoint {info.name} left out what cannot be pickled:"]
            lines += [f"  {p.name} ({p.type}): {p.reason}" for p in info.unpicklable]
            print("\n".join(lines), file=sys.stderr)
        self._unpicklable = names


def enable_autocheckpoint(session: Session, *, keep: int = 20) -> AutoCheckpoint:
    """Checkpoint ``session`` after each of its turns (idempotent; returns the hook's state)."""
    auto = _autos.get(session)
    if auto is None:
        auto = AutoCheckpoint(keep)
        _autos[session] = auto
        session.before_turn.append(auto.note_turn_start)
        session.after_turn.append(auto.auto_checkpoint)
    auto.keep, auto.enabled = keep, True
    return auto


def autocheckpoint_of(session: Session) -> AutoCheckpoint | None:
    return _autos.get(session)
