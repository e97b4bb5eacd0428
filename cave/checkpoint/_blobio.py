"""Blob files, and the blob digest computed while the data moves.

    b"CAVEBLOB" | u32 version | u32 0 | tag (32) | u64 payload length | 8 x 0 | payload

The file's name is the payload's digest, and the header's version says which one:

* **version 2** (written wherever the ``blake3`` package is installed, which Cave requires):
  BLAKE3-256 of the payload, exactly what ``b3sum`` prints for it. One thread hashes in order
  while other threads move the bytes; on the 2-core test VM it ran at 0.30 s per GiB against
  1.27 s for SHA-256 (with SHA-NI), so a save is no longer bound by its hash.
* **version 1** (every blob written before, and still read): SHA-256 over the SHA-256s of the
  payload's consecutive 8 MiB blocks (the construction Dropbox uses), hashed two blocks at a time.

Both are 256-bit cryptographic hashes (collision and preimage resistant), and the blob's HMAC tag
binds the version with the digest (`_signing`), so a file cannot be re-labelled as the other
version. Payloads stored inline in SQLite have no header: they stay version 1 (at most 256 KiB).

Whole local blob files (O_DIRECT where the filesystem takes it) are ``_blobfile``'s; this module
holds the format, the digest and the page-cache transfers both paths use.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import mmap
import os
import queue
import struct
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

MAGIC = b"CAVEBLOB"
VERSIONS = (1, 2)
"""Blob format versions this Cave reads (see the module docstring)."""
HASHES = {1: "SHA-256", 2: "BLAKE3"}
"""The hash each version's digest is built on, for messages."""
HEADER = 64
BLOCK = 8 << 20
SYNC_EVERY = 256 << 20
_LAYOUT = struct.Struct("<8sII32sQ8x")
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def write_version() -> int:
    """The version new blob files get: 2 (BLAKE3) if ``blake3`` is installed, else 1 (slower,
    still correct). Looked up without importing it."""
    global _write_version
    if _write_version is None:
        _write_version = 2 if importlib.util.find_spec("blake3") is not None else 1
    return _write_version


_write_version: int | None = None


def header(tag: bytes, length: int, version: int) -> bytes:
    return _LAYOUT.pack(MAGIC, version, 0, tag, length)


def parse_header(raw: bytes) -> tuple[bytes, int, int]:
    """(tag, payload length, version); raises ValueError on anything that is not our header."""
    if len(raw) != HEADER:
        raise ValueError("file shorter than a blob header")
    magic, version, _zero, tag, length = _LAYOUT.unpack(raw)
    if magic != MAGIC or version not in VERSIONS:
        raise ValueError("not a Cave blob (bad magic or version)")
    return tag, length, version


def size_of(parts: Iterable[bytes | memoryview]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)


def _hash_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(2, thread_name_prefix="cave-checkpoint-hash")
        return _pool


def _sha(view: Any) -> bytes:
    return hashlib.sha256(view).digest()


def _combine(block_digests: Iterable[bytes]) -> bytes:
    return hashlib.sha256(b"".join(block_digests)).digest()


def blake3() -> Any:
    """A fresh BLAKE3 hasher (single-threaded; its ``update`` releases the GIL)."""
    try:
        from blake3 import blake3 as new
    except ImportError as exc:
        raise ImportError(
            "this checkpoint's blobs are BLAKE3-addressed (blob format 2): install the blake3 "
            "package (pip install blake3) to read them"
        ) from exc
    return new()


def _b3(views: Iterable[memoryview]) -> bytes:
    h = blake3()
    for view in views:
        h.update(view)
    return bytes(h.digest())


class _Payload:
    """A payload given as parts, addressed by payload offset without joining (copying) them."""

    def __init__(self, parts: Iterable[bytes | memoryview]) -> None:
        self.views = [
            v
            for v in (memoryview(p).cast("B") if isinstance(p, memoryview) else memoryview(p)
                      for p in parts)
            if v.nbytes
        ]  # fmt: skip
        self.starts = []
        pos = 0
        for view in self.views:
            self.starts.append(pos)
            pos += view.nbytes
        self.length = pos
        self.blocks = range(-(-pos // BLOCK))

    def pieces(self, start: int, end: int) -> Iterator[memoryview]:
        i = bisect.bisect_right(self.starts, start) - 1
        while start < end:
            view, base = self.views[i], self.starts[i]
            stop = min(end - base, view.nbytes)
            yield view[start - base : stop]
            start = base + stop
            i += 1

    def block(self, index: int) -> Iterator[memoryview]:
        return self.pieces(index * BLOCK, min((index + 1) * BLOCK, self.length))

    def copy_into(self, dst: memoryview, start: int) -> None:
        pos = 0
        for piece in self.pieces(start, start + dst.nbytes):
            dst[pos : pos + piece.nbytes] = piece
            pos += piece.nbytes

    def block_digest(self, index: int) -> bytes:
        h = hashlib.sha256()
        for piece in self.block(index):
            h.update(piece)
        return h.digest()


def digest_of(parts: Iterable[bytes | memoryview], *, version: int) -> bytes:
    """The blob digest of a payload given as parts (see the module docstring)."""
    payload = _Payload(parts)
    if version == 2:
        return _b3(payload.views)
    if len(payload.blocks) <= 1:
        return _combine(payload.block_digest(i) for i in payload.blocks)
    return _combine(_hash_pool().map(payload.block_digest, payload.blocks))


def _each(fn: Callable[[Any], Any], items: Iterable[Any]) -> Generator[Any, None, None]:
    """``pool.map(fn, items)``, but no task is still running when this returns or raises: the
    tasks use a file descriptor that the caller closes right after."""
    futures = [_hash_pool().submit(fn, item) for item in items]
    try:
        for future in futures:
            yield future.result()
    finally:
        _finish(futures)


def _finish(futures: list[Future[Any]]) -> None:
    for future in futures:
        future.cancel()
    wait(futures)


# --- through the page cache -------------------------------------------------------------------


def pwrite_hashed(
    fd: int,
    offset: int,
    parts: list[bytes | memoryview],
    on_bytes: Callable[[int], None],
    sync: Callable[[], Any] | None = None,
    *,
    version: int,
) -> bytes:
    """Write ``parts`` to file ``fd`` from ``offset``; return their digest.

    Each block is written (``os.pwrite``) by one pool task, two at a time; version 1 hashes it in
    the same task, version 2 on the caller's thread as the blocks complete, in order. The
    caller's thread calls ``sync`` (an fdatasync) every `SYNC_EVERY` bytes written, so writeback
    overlaps the rest of the work instead of all happening in the final fsync.
    """
    payload = _Payload(parts)
    b3 = blake3() if version == 2 else None

    def block(index: int) -> bytes:
        pos = offset + index * BLOCK
        for piece in payload.block(index):
            done = 0
            while done < piece.nbytes:
                done += os.pwrite(fd, piece[done:], pos + done)
            pos += piece.nbytes
        return payload.block_digest(index) if b3 is None else b""

    if len(payload.blocks) <= 1:
        digests = [block(i) for i in payload.blocks]
        on_bytes(payload.length)
        return _combine(digests) if b3 is None else _b3(payload.views)
    digests = []
    unsynced = 0
    results = _each(block, payload.blocks)
    try:
        for index, digest in zip(payload.blocks, results, strict=True):
            if b3 is None:
                digests.append(digest)
            else:
                for piece in payload.block(index):
                    b3.update(piece)
            n = min(BLOCK, payload.length - index * BLOCK)
            on_bytes(n)
            unsynced += n
            if sync is not None and unsynced >= SYNC_EVERY:
                sync()
                unsynced = 0
    finally:
        results.close()
    return _combine(digests) if b3 is None else bytes(b3.digest())


def allocate(length: int) -> memoryview:
    """A writable buffer for a payload (restored arrays become views of it).

    Large ones are private anonymous memory (`_private`), not zeroed first (a ``bytearray`` is,
    which costs a whole extra pass over fresh memory).
    """
    if length < 2 * BLOCK:
        return memoryview(bytearray(length))
    return memoryview(_private(length))


def _private(size: int) -> mmap.mmap:
    """Fresh private anonymous memory, in 4 KiB pages.

    MAP_PRIVATE matters: ``mmap.mmap(-1, n)`` alone is MAP_SHARED, so a child forked later
    (``multiprocessing``) could write into the parent's verified, restored arrays. Huge pages
    are not requested for restore buffers: on the test VM an O_DIRECT read of 1 GiB into them
    took 0.40 s while the memory had just been freed by another process, but 1.3-1.5 s once
    the VM had handed freed memory back to its host (free page reporting), against 0.59-0.65 s
    for 4 KiB pages; a new kernel resuming a session meets the second case.
    """
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def pread_hashed(
    fd: int, offset: int, buf: memoryview, on_bytes: Callable[[int], None], *, version: int
) -> bytes:
    """Fill ``buf`` from file ``fd`` at ``offset`` and return its digest.

    Each block is read (``os.preadv``) by a pool task, two at a time, so that both cores share
    the work of faulting in fresh memory and copying; version 1 hashes the block in the same task
    (a single reader thread feeding hashers was measured to be the bottleneck of restores),
    version 2 on the caller's thread as the blocks land, in order.
    """
    total = buf.nbytes
    b3 = blake3() if version == 2 else None

    def block(start: int) -> bytes:
        view = buf[start : min(start + BLOCK, total)]
        got = 0
        while got < view.nbytes:
            n = os.preadv(fd, [view[got:]], offset + start + got)
            if not n:
                raise EOFError(f"blob ends after {start + got} of {total} bytes")
            got += n
        if b3 is not None:
            return b""
        digest = _sha(view)
        on_bytes(view.nbytes)
        return digest

    starts = range(0, total, BLOCK)
    if b3 is None:
        if total <= BLOCK:
            return _combine(block(s) for s in starts)
        return _combine(list(_each(block, starts)))
    results = _each(block, starts) if total > BLOCK else (block(s) for s in starts)
    try:
        for start, _done in zip(starts, results, strict=True):
            view = buf[start : min(start + BLOCK, total)]
            b3.update(view)
            on_bytes(view.nbytes)
    finally:
        results.close()
    return bytes(b3.digest())


def read_hashed(
    readinto: Callable[[memoryview], int],
    buf: memoryview,
    on_bytes: Callable[[int], None],
    *,
    version: int,
) -> bytes:
    """Fill ``buf`` from ``readinto``; return its digest, hashing blocks as they arrive.

    Raises EOFError if the data ends early.
    """
    total = buf.nbytes

    def fill(view: memoryview) -> None:
        got = 0
        while got < view.nbytes:
            n = readinto(view[got:])
            if not n:
                raise EOFError(f"blob ends after {got} of {view.nbytes} bytes")
            got += n

    if total <= BLOCK:
        fill(buf)
        on_bytes(total)
        return digest_of([buf], version=version)
    b3 = blake3() if version == 2 else None
    pool = _hash_pool()
    ready: queue.Queue[tuple[int, int] | BaseException | None] = queue.Queue()

    def reader() -> None:
        try:
            for start in range(0, total, BLOCK):
                end = min(start + BLOCK, total)
                fill(buf[start:end])
                ready.put((start, end))
            ready.put(None)
        except BaseException as exc:
            ready.put(exc)

    futures: list[Future[bytes]] = []
    thread = threading.Thread(target=reader, name="cave-checkpoint-reader", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            start, end = item
            if b3 is None:
                futures.append(pool.submit(_sha, buf[start:end]))
            else:
                b3.update(buf[start:end])  # in order, while the reader fills the next block
            on_bytes(end - start)
    finally:
        thread.join()
    return _combine(f.result() for f in futures) if b3 is None else bytes(b3.digest())
