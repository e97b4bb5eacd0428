"""Fingerprints that decide whether an entry changed since the last checkpoint.

A fingerprint is xxh3-128 over the entry's payload, except that each large out-of-band buffer
(a DataFrame block, an array) contributes its own xxh3-128 instead of its bytes. That per-buffer
digest is cached and reused while the kernel reports the buffer's pages unwritten since it was
computed (`_write_tracking`), so a checkpoint of an unchanged 1 GiB DataFrame reads none of it.

Fingerprints decide only what to write again; integrity and authenticity rest on SHA-256 and HMAC,
never on these. A wrong "unchanged" would save stale data, which is why a cached digest is used only
under the exact conditions `_write_tracking` states, and otherwise the buffer is hashed again.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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
    watched: bool
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
    key: tuple[int, int], owner: Any, digest: bytes, watched: bool, edges: tuple[bytes, bytes]
) -> _Known | None:
    """A cache entry that removes itself when ``owner`` dies; None if ``owner`` cannot be
    weakly referenced (``bytes``): such buffers are hashed every time."""
    entry = _Known(None, digest, watched, edges)

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
    with _known_lock:
        known = _known.get(key)
    if known is not None and (known.owner is None or known.owner() is not owner):
        known = None
    if (
        known is not None
        and known.watched
        and tracker.untouched(*key)
        and _edges(view, address) == known.edges
    ):
        return known.digest
    # Protect and copy the edges first, hash second: a write racing the hash shows next time.
    watched = (known is None or not known.watched) and tracker.watch(*key)
    edges = _edges(view, address)
    h, _prefix = _hasher()
    h.update(view)
    digest: bytes = h.digest()
    if watched and known is not None and digest != known.digest:
        tracker.unwatch(*key)  # changed since the last save: hashing follows it more cheaply
        watched = False
    elif known is not None and known.watched and not watched:
        tracker.unwatch(*key)  # written while tracked
    entry = _remember(key, owner, digest, watched, edges)
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
