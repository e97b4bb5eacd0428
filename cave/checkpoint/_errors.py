"""Errors the checkpoint store adds under `CheckpointError` (see cave/_errors.py for the tree)."""

from __future__ import annotations

from .._errors import CheckpointError


class CheckpointIncomplete(CheckpointError):
    """A verified manifest names blobs the store no longer holds: nothing was unpickled."""

    def __init__(self, name: str, missing: list[str], url: str) -> None:
        self.name = name
        self.missing = missing
        self.url = url
        shown = ", ".join(d[:12] for d in missing[:5]) + (" ..." if len(missing) > 5 else "")
        super().__init__(
            f"Checkpoint {name!r} needs {len(missing)} blob(s) that {url} does not hold ({shown}). "
            "Nothing was unpickled. If the session was copied, copy its blobs/ too; "
            "`cave checkpoints verify` shows which other checkpoints are intact."
        )


class InvalidCheckpointName(CheckpointError, ValueError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"{name!r} is not a usable checkpoint name: use 1-128 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit."
        )
