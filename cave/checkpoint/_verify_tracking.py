"""Trust, but verify: after saves, re-hash one buffer that write tracking vouches for.

Write tracking (`_write_tracking`) lets a save skip reading a large buffer the kernel saw no write
to. Its invariant names what it trusts; this checks it in practice. Every ``every``-th save starts
one background re-hash of a trusted buffer (`_fingerprint.verify_one`) once the save has
committed, so the save itself stays as fast as tracking makes it, and the check runs in the time
between saves. A mismatch turns tracking off for the process at once, so the next save hashes
everything; that save then warns (`WriteTrackingOff`) and, in a kernel session, the cell prints
it on stderr and the audit log gets ``checkpoint.tracking_off``.
"""

from __future__ import annotations

import threading

from . import _fingerprint


class WriteTrackingOff(UserWarning):
    """Write tracking vouched for a buffer that had changed; it is off for this process now."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"Checkpoint write tracking was turned off for this process: {reason}. Earlier "
            "checkpoints may hold stale copies of that buffer; this and every later save hashes "
            "every buffer. Save again to get a checkpoint of the live data, and report the route "
            "(CAVE_CHECKPOINT_WRITE_TRACKING=0 turns tracking off from the start)."
        )


class Verifier:
    """Schedules `_fingerprint.verify_one` after every ``every``-th save (0: never)."""

    def __init__(self, every: int) -> None:
        if every < 0:
            raise ValueError(f"verify_every must be 0 (never) or a positive number, not {every}")
        self.every = every
        self.last: _fingerprint.Verification | None = None
        self.error: str | None = None
        """Why the last check itself failed (not a tracker failure), if it did."""
        self._saves = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def after_save(self) -> None:
        """Start a background check if this save is the ``every``-th (one check at a time)."""
        with self._lock:
            self._saves += 1
            if not self.every or self._saves % self.every:
                return
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name="cave-checkpoint-verify", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        try:
            self.last = _fingerprint.verify_one()
        except Exception as exc:  # a check that fails is not a tracker failure; never raise here
            self.last = _fingerprint.Verification("none")
            self.error = f"{type(exc).__name__}: {exc}"

    def wait(self, timeout: float | None = None) -> _fingerprint.Verification | None:
        """Wait for the running check (if any) and return the latest result."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.last


def take_failure() -> str | None:
    """The reason tracking was turned off by a failed verification, once per failure."""
    return _fingerprint.take_failure()
