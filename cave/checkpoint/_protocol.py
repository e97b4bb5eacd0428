"""The checkpoint seam: the `CheckpointStore` protocol and the plain records it returns.

The kernel and the CLI talk to a store only through these names, so another implementation (a
remote service, a test double) needs no inheritance, only the same methods.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while blobs are written or read."""


@dataclass(frozen=True)
class Problem:
    """One object that could not be saved or restored; the rest of the checkpoint is fine."""

    name: str
    """Name in the agent namespace."""
    type: str
    """Qualified type name, for example ``_thread.lock``."""
    reason: str
    """What went wrong, in one line (the pickler's or loader's error message)."""
    phase: str = "save"
    """``"save"`` (not stored) or ``"restore"`` (stored but could not be rebuilt)."""


@dataclass(frozen=True)
class Changes:
    """Names that differ between a checkpoint and the one before it (or between two checkpoints)."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


@dataclass(frozen=True)
class CheckpointInfo:
    """What `list()` shows for one checkpoint, and what `save()` returns."""

    name: str
    seq: int
    """Position in the session, 1 for the first checkpoint ever saved in the store."""
    created: datetime
    """When the save committed (UTC, timezone-aware)."""
    size: int
    """Bytes of all blobs this checkpoint references (objects and state)."""
    objects: int
    """Number of names restored by this checkpoint."""
    parent: str | None
    """The newest checkpoint when this one was saved; `changes` are relative to it."""
    changes: Changes
    state_changed: bool
    """True when the session state (conversation, grants, ...) differs from the parent's."""
    unpicklable: tuple[Problem, ...]
    """Objects left out of this checkpoint, each with its reason."""
    written: int = 0
    """Bytes of new blobs this save wrote (0 when nothing changed); 0 in `list()` for old saves."""
    blobs_written: int = 0
    """New blob files this save wrote."""


@dataclass
class Restored:
    """What `load()` gives back. `namespace` is the dict passed as ``into=``, when one was."""

    namespace: MutableMapping[str, Any]
    state: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    info: CheckpointInfo | None = None


@dataclass(frozen=True)
class CheckpointDiff:
    """Names added, changed and removed from checkpoint ``a`` to checkpoint ``b``."""

    a: str
    b: str
    changes: Changes
    unchanged: tuple[str, ...]
    state_keys_changed: tuple[str, ...]
    """Top-level keys of the session state whose value differs."""


@dataclass(frozen=True)
class VerifyReport:
    """Result of `verify()`: every manifest signature and every referenced blob re-hashed."""

    checked: tuple[str, ...]
    """Checkpoints whose manifest and blobs all verified."""
    failed: tuple[tuple[str, str], ...]
    """(checkpoint, problem) pairs; empty when everything verified."""
    blobs_checked: int
    orphan_blobs: int
    """Blobs no checkpoint references (left by a crash or by `remove`); `gc()` deletes them."""

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class GcReport:
    removed_blobs: int
    removed_bytes: int
    kept_blobs: int
    removed_temp: int
    """Partial files left by interrupted saves."""


@runtime_checkable
class CheckpointStore(Protocol):
    """Where sessions are checkpointed. `SessionStore` is the implementation Cave ships."""

    def save(
        self,
        name: str | None,
        namespace: Mapping[str, Any],
        state: Mapping[str, Any],
        *,
        progress: bool | ProgressCallback = False,
        skip: Collection[str] = (),
    ) -> CheckpointInfo: ...

    def load(
        self,
        name: str,
        *,
        into: MutableMapping[str, Any] | None = None,
        progress: bool | ProgressCallback = False,
    ) -> Restored: ...

    def list(self) -> list[CheckpointInfo]: ...

    def diff(self, a: str, b: str) -> CheckpointDiff: ...

    def remove(self, name: str) -> None: ...

    def verify(self, name: str | None = None) -> VerifyReport: ...

    def gc(self) -> GcReport: ...


StoreLocation = str | os.PathLike[str]
