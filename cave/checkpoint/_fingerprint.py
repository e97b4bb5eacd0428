"""Fingerprints that decide whether an entry changed since the last checkpoint.

A fingerprint is xxh3-128 over the entry's payload, except that each large out-of-band buffer
(a DataFrame block, an array) contributes its own xxh3-128 instead of its bytes. That per-buffer
digest is cached and reused while the kernel reports the buffer's pages unwritten since it was
computed (`_write_tracking`), so a checkpoint of an unchanged 1 GiB DataFrame reads none of it.

Fingerprints decide only what to write again; integrity and authenticity rest on SHA-256 and HMAC,
never on these. A wrong "unchanged" would save stale data, which is why a cached digest is used only
under the exact conditions `_write_tracking` states (its invariant), and otherwise the buffer is
hashed again. Trust, but verify: `verify_one` re-hashes one trusted buffer in full (the store runs
it after saves) and, on a mismatch the tracker did not explain, turns tracking off for the process
(`_write_tracking.disable`); `take_failure` hands the reason to whoever reports it.
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from . import _write_tracking


def _hasher() -> tuple[Any, str]:
    try:
        import xxhash
    except ImportError:  # pragma: no cover - xxhash is a dependency; this keeps saves working
        import hashlib

        return hashlib.blake2b(digest_size=16), "b2:"
    return xxhash.xxh3_128(), "x3:"


@dataclass
class _Known:
    owner: weakref.ref[Any] | None
    digest: bytes
    watch: _write_tracking.Watch | None
    """The tracker's evidence that the whole pages were not written since `digest`; None when
    the buffer is not tracked (hashed at every save)."""
    edges: tuple[bytes, bytes]
    """Copies of the partial pages at the buffer's ends, which the kernel does not track."""


_known: dict[tuple[int, int], _Known] = {}
_known_lock = threading.Lock()


def _owner(view: memoryview) -> Any:
    """The object that owns the memory behind ``view`` (following NumPy's ``.base`` chain)."""
    obj = view.obj
    for _ in range(64):  # bounded: a foreign ``base`` attribute could form a cycle
        nxt = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
        if nxt is None or nxt is obj:
            return obj
        obj = nxt
    return obj


def _address(view: memoryview) -> int | None:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - large out-of-band buffers come from NumPy/Arrow
        return None
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def _forget(key: tuple[int, int], entry: _Known) -> None:
    with _known_lock:
        if _known.get(key) is entry:
            del _known[key]


def _edges(view: memoryview, address: int) -> tuple[bytes, bytes]:
    start, end = _write_tracking.inner_pages(address, view.nbytes)
    head = max(0, min(start - address, view.nbytes))
    tail = max(head, end - address)
    return bytes(view[:head]), bytes(view[tail:])


def _remember(
    key: tuple[int, int],
    owner: Any,
    digest: bytes,
    watch: _write_tracking.Watch | None,
    edges: tuple[bytes, bytes],
) -> _Known | None:
    """A cache entry that removes itself when ``owner`` dies; None if ``owner`` cannot be
    weakly referenced (``bytes``): such buffers are hashed every time."""
    entry = _Known(None, digest, watch, edges)

    def gone(_ref: weakref.ref[Any]) -> None:
        _forget(key, entry)

    try:
        entry.owner = weakref.ref(owner, gone)
    except TypeError:
        return None
    return entry


def buffer_digest(view: memoryview) -> bytes:
    """xxh3-128 of a large buffer, from the cache when the kernel saw no write to it since.

    Which buffers are tracked adapts to how they are used. A new buffer is tracked from its first
    hash. One found written since is hashed and no longer tracked: it would pay a fault per page
    after every checkpoint for nothing, and its huge pages would stay split into 4 KiB ones (a
    random gather over a 1 GiB array measured 30% slower that way). It is tracked again once a
    save finds its content unchanged.
    """
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    tracker = _write_tracking.tracker()
    address = _address(view) if tracker is not None and view.c_contiguous else None
    if tracker is None or address is None:
        h, _prefix = _hasher()
        h.update(view)
        return bytes(h.digest())
    key = (address, view.nbytes)
    owner = _owner(view)
    try:
        weakref.ref(owner)
    except TypeError:  # ``bytes``: never cached (see `_remember`), so not worth protecting
        h, _prefix = _hasher()
        h.update(view)
        return bytes(h.digest())
    with _known_lock:
        known = _known.get(key)
    if known is not None and (known.owner is None or known.owner() is not owner):
        known = None
    if (
        known is not None
        and known.watch is not None
        and tracker.untouched(known.watch)
        and _edges(view, address) == known.edges
    ):
        return known.digest
    # Protect and copy the edges first, hash second: a write racing the hash shows next time.
    watch: _write_tracking.Watch | None = None
    if known is not None and known.watch is not None and not tracker.clean(*key):
        tracker.unwatch(known.watch)  # written while tracked: hashing follows it more cheaply
    else:
        # New; untracked last time; or its watch was revoked by an overlapping one with nothing
        # written (then the range is clean, and a fresh watch re-protects nothing).
        watch = tracker.watch(*key)
    edges = _edges(view, address)
    h, _prefix = _hasher()
    h.update(view)
    digest: bytes = h.digest()
    if watch is not None and known is not None and digest != known.digest:
        tracker.unwatch(watch)  # changed since the last save: still changing, stop tracking
        watch = None
    entry = _remember(key, owner, digest, watch, edges)
    with _known_lock:
        if entry is not None:
            _known[key] = entry
        else:
            _known.pop(key, None)
    return digest


def fingerprint(parts: Iterable[bytes | memoryview]) -> str:
    """The fingerprint of a payload given as parts (see the module docstring)."""
    h, prefix = _hasher()
    for part in parts:
        if isinstance(part, memoryview) and part.nbytes >= _write_tracking.MIN_TRACKED:
            h.update(b"B" + buffer_digest(part))
        else:
            h.update(part)
    return prefix + h.hexdigest()


def cached_buffers() -> int:
    """How many buffer digests are cached (for tests and `%checkpoint` diagnostics)."""
    with _known_lock:
        return len(_known)


Outcome = Literal["match", "mismatch", "written", "none"]


@dataclass(frozen=True)
class Verification:
    """One re-hash of a trusted buffer (`verify_one`)."""

    outcome: Outcome
    """``match``; ``mismatch`` (tracking is now off); ``written`` (written during or before the
    check: inconclusive, the next save hashes it anyway); ``none`` (nothing trusted to check)."""
    nbytes: int = 0
    seconds: float = 0.0


_failure: str | None = None
_turn = 0


def verify_one() -> Verification:
    """Re-hash one buffer whose cached digest the tracker vouches for (round robin) and compare.

    A mismatch while the tracker still says "untouched" before and after the hash means a write
    it cannot see: tracking is turned off for this process, the cache is dropped (every buffer
    is hashed at the next save), and `take_failure` returns the reason once.
    """
    global _turn, _failure
    tracker = _write_tracking.tracker()
    if tracker is None:
        return Verification("none")
    with _known_lock:
        trusted = [(k, e) for k, e in _known.items() if e.watch is not None and e.watch.valid]
        _turn += 1
    if not trusted:
        return Verification("none")
    (address, nbytes), entry = trusted[_turn % len(trusted)]
    owner = entry.owner() if entry.owner is not None else None
    watch = entry.watch
    if owner is None or watch is None:
        return Verification("none")
    t0 = time.perf_counter()
    # ``owner`` (held until we return) keeps the memory mapped; untouched() checked it is.
    view = memoryview((ctypes.c_char * nbytes).from_address(address)).cast("B")
    if not tracker.untouched(watch) or _edges(view, address) != entry.edges:
        return Verification("written", nbytes, time.perf_counter() - t0)
    h, _prefix = _hasher()
    h.update(view)
    digest = h.digest()
    if not tracker.untouched(watch) or _edges(view, address) != entry.edges:
        return Verification("written", nbytes, time.perf_counter() - t0)
    if digest == entry.digest:
        return Verification("match", nbytes, time.perf_counter() - t0)
    reason = (
        f"a {nbytes}-byte buffer ({type(owner).__name__} at {address:#x}) changed without the "
        "kernel's page tables showing a write (pinned memory written by a device or the kernel, "
        "MADV_DONTNEED, or another untracked route)"
    )
    _write_tracking.disable(f"turned off after a failed verification: {reason}")
    with _known_lock:
        _known.clear()
        _failure = reason
    return Verification("mismatch", nbytes, time.perf_counter() - t0)


def take_failure() -> str | None:
    """Why tracking was turned off by `verify_one`, once (None if it was not, or was told)."""
    global _failure
    with _known_lock:
        reason, _failure = _failure, None
    return reason
