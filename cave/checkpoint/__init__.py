"""Checkpoint and resume whole sessions: incremental, crash-safe, signed, portable.

See docs/checkpoints.md. The kernel uses `SessionStore` through the `CheckpointStore` protocol;
users extend it with `register()` for objects that pickling cannot carry.
"""

from . import _data_reducers  # noqa: F401  (registers the data stack's reducers, by name)
from ._duckdb import copy_database
from ._errors import CheckpointIncomplete, InvalidCheckpointName
from ._protocol import (
    Changes,
    CheckpointDiff,
    CheckpointInfo,
    CheckpointStore,
    GcReport,
    Problem,
    ProgressCallback,
    Restored,
    VerifyReport,
)
from ._reducers import register, unregister
from ._session_io import restore, save
from ._session_state import RestoreReport, capture
from ._signing import config_dir, load_or_create_secret
from ._store import SessionStore
from ._verify_tracking import WriteTrackingOff

__all__ = [
    "Changes",
    "CheckpointDiff",
    "CheckpointIncomplete",
    "CheckpointInfo",
    "CheckpointStore",
    "GcReport",
    "InvalidCheckpointName",
    "Problem",
    "ProgressCallback",
    "RestoreReport",
    "Restored",
    "SessionStore",
    "VerifyReport",
    "WriteTrackingOff",
    "capture",
    "config_dir",
    "copy_database",
    "load_or_create_secret",
    "register",
    "restore",
    "save",
    "unregister",
]
