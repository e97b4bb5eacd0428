"""Where a session's checkpoints go, what an unnamed one is called, and where events are recorded.

Shared by the save/restore operations (`_session_io`), the state they move (`_session_state`,
`_session_approvals`) and the auto-checkpoint hook (`_autocheckpoint`), so that none of those
imports another just for a location or an audit call.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import TYPE_CHECKING, Any

from .._errors import CheckpointError, CheckpointNotFound

if TYPE_CHECKING:
    from .._session import Session
    from ._store import SessionStore

__all__ = ["STORE_ENV", "audit", "fresh_name", "open_store", "store_url"]

from .._env import STORE_ENV, VERIFY_EVERY_ENV

"""A store URL or directory that overrides ``<session dir>/checkpoints``."""

_stores: weakref.WeakKeyDictionary[Session, tuple[str, SessionStore]] = (
    weakref.WeakKeyDictionary()
)


def store_url(session: Session) -> str:
    """``session.checkpoint_store``, ``$CAVE_CHECKPOINTS``, or ``<session dir>/checkpoints``."""
    url = session.checkpoint_store or os.environ.get(STORE_ENV)
    return url or str(session.directory / "checkpoints")


def open_store(session: Session) -> SessionStore:
    """The session's store, opened once per location (the signing key is read then)."""
    url = store_url(session)
    cached = _stores.get(session)
    if cached is not None and cached[0] == url:
        return cached[1]
    from ._store import SessionStore

    store = SessionStore(url, verify_every=verify_every())
    _stores[session] = (url, store)
    return store


def verify_every() -> int:
    """``$CAVE_CHECKPOINT_VERIFY_EVERY`` (default 1), checked."""
    raw = os.environ.get(VERIFY_EVERY_ENV, "1").strip() or "1"
    if not raw.isdigit():
        raise CheckpointError(
            f"{VERIFY_EVERY_ENV}={raw!r} is not a number of saves: set it to 0 (never re-hash a "
            "tracked buffer to check write tracking), 1 (after every save, the default) or N."
        )
    return int(raw)


def fresh_name(store: SessionStore) -> str:
    """A name for ``%checkpoint save`` without one: ``cp-<UTC time>``, never an ``auto-`` name."""
    base = "cp-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name, n = base, 1
    while True:
        try:
            store.info(name)
        except CheckpointNotFound:
            return name
        except CheckpointError:
            pass  # a tampered one by that name: do not overwrite it either
        n += 1
        name = f"{base}-{n}"


def audit(session: Session, kind: str, **fields: Any) -> None:
    """Append ``kind`` to the session's audit log; a session without one records nothing."""
    if session.audit is not None:
        session.audit.record(kind, **fields)
