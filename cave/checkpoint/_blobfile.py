"""Whole local blob files, with O_DIRECT where the filesystem takes it.

Local blob files of `DIRECT_MIN` bytes or more move with O_DIRECT (`write_file`, `read_file`):
through the page cache, the kernel's copy cost about as much CPU as SHA-256 itself (~0.7 core-s
per GiB each way on the 2-core test VM) and bounded saves and restores. A save copies the file's
bytes into page-aligned bounce buffers (memcpy: ~0.05 s per GiB) and writes `CHUNK`-sized pieces,
`DEPTH` in flight, while one more thread hashes the payload in the objects' own memory (version 2:
one BLAKE3 pass in order; version 1: the pool's two threads, a block each); the first page,
holding the header and so the digest, is written last. A restore reads the whole file into one
page-aligned private mapping, `DEPTH` reads in flight, hashes the bytes once the reads under them
have landed (version 2: in order on the caller's thread; version 1: each 8 MiB block on the
pool), and returns the payload as a view at offset 64. Each byte is read once, into
the memory that is hashed and then unpickled. Where the filesystem refuses O_DIRECT (EINVAL on
setting the flag or on a transfer), or with ``direct_io = False``, the same files move through the
page cache: each block hashed and written (or read and hashed) by one task of the two-thread
pool, ``os.pwrite`` / ``os.preadv`` at its offset. ``hashlib`` and file I/O release the GIL.

Rejected: a 4 KiB header (a blob version 2) to page-align payloads on disk. Reading the 64-byte
header along with the payload costs nothing; the payload's buffers, 64-byte aligned within it,
stay 64-byte aligned in memory; and one format keeps old, local and object-store blobs alike.
Not done: using the page cache when a blob happens to be cached (a direct read of a cached 1 GiB
blob took 0.70 s against 0.62 s buffered); blobs written with O_DIRECT are never cached, and
probing with ``RWF_NOWAIT`` starts readahead of what is not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ._blobio import (
    BLOCK,
    HEADER,
    _b3,
    _combine,
    _finish,
    _hash_pool,
    _Payload,
    _private,
    _sha,
    allocate,
    blake3,
    pread_hashed,
    pwrite_hashed,
)

__all__ = ["read_file", "write_file"]

ALIGN = 4096
"""O_DIRECT transfers start, end and sit in memory at multiples of this (a page; >= any block)."""
CHUNK = 4 << 20
"""Bytes per O_DIRECT transfer (as fast as 8 MiB ones on the test VM, half the buffer memory)."""
DEPTH = 8
"""O_DIRECT transfers in flight: one at a time read 1 GiB in ~0.9 s on the test VM, 8 in ~0.5 s."""
DIRECT_MIN = BLOCK
"""Payloads at least this large move with O_DIRECT; smaller ones are a block or less of work."""
direct_io = True
"""Set False to move every blob through the page cache (tests use it to run the fallback)."""
_MADV_POPULATE_WRITE = 23  # Linux 5.14+; the mmap module of Python 3.11 lacks the name
_io: ThreadPoolExecutor | None = None
_io_lock = threading.Lock()


def _io_pool() -> ThreadPoolExecutor:
    """Threads that mostly wait for O_DIRECT transfers (hashing, which is CPU, has its own)."""
    global _io
    with _io_lock:
        if _io is None:
            _io = ThreadPoolExecutor(DEPTH, thread_name_prefix="cave-checkpoint-io")
        return _io


class _Refused(Exception):
    """The kernel refused an O_DIRECT transfer (EINVAL): redo the file through the page cache."""


def _round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for ``fd``; False if the filesystem refuses it (EINVAL)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def _transfer(call: Callable[..., int], *args: Any) -> int:
    try:
        return call(*args)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise _Refused from exc
        raise


def _preallocate(fd: int, length: int) -> None:
    """Reserve the file's blocks so that parallel O_DIRECT writes are overwrites: ext4 serialises
    writes that extend a file or fill holes. Best effort, and never glibc's posix_fallocate
    fallback, which writes a byte into every block where the filesystem lacks fallocate."""
    import ctypes

    try:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    except AttributeError:
        return
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate(fd, 0, 0, length)  # a failure just leaves the file unreserved


def _bounce_buffers(size: int) -> memoryview:
    """Private memory to write from, in 2 MiB pages where the kernel allows, faulted in up front.

    On the test VM the same O_DIRECT writes took 0.69 s per GiB from 4 KiB pages and 0.53 s
    from huge pages (the disk's speed). Only DEPTH x CHUNK bytes (32 MiB) are faulted in per
    blob, so the first-touch cost that keeps restore buffers in 4 KiB pages (`_private`) is
    small here.
    """
    mem = _private(size)
    for advice in (getattr(mmap, "MADV_HUGEPAGE", None), _MADV_POPULATE_WRITE):
        if advice is not None:
            with contextlib.suppress(OSError):  # an older kernel: faulted in as they are used
                mem.madvise(advice)
    return memoryview(mem)


class _Tally:
    """Forwards byte counts to ``on_bytes``, from any thread. After `restart` (an O_DIRECT attempt
    was refused and the file is redone) it forwards only counts beyond what was already sent."""

    def __init__(self, on_bytes: Callable[[int], None]) -> None:
        self._on_bytes = on_bytes
        self._seen = self._sent = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self._seen += n
            new, self._sent = self._seen - self._sent, max(self._sent, self._seen)
        if new > 0:
            self._on_bytes(new)

    def restart(self) -> None:
        with self._lock:
            self._seen = 0


def _write_direct(
    fd: int,
    payload: _Payload,
    on_bytes: Callable[[int], None],
    head: Callable[[bytes], bytes],
    version: int,
) -> bytes:
    size = HEADER + payload.length
    _preallocate(fd, _round_up(size))
    chunks = range(0, size, CHUNK)
    depth = min(DEPTH, len(chunks))
    arena = _bounce_buffers(depth * CHUNK)
    free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
    for i in range(depth):
        free.put(arena[i * CHUNK : (i + 1) * CHUNK])

    def put(at: int) -> int:
        start, end = max(at, ALIGN), min(at + CHUNK, size)  # the first page goes last
        buf = free.get()
        try:
            payload.copy_into(buf[: end - start], start - HEADER)
            padded = _round_up(end - start)
            buf[end - start : padded] = bytes(padded - (end - start))
            done = 0
            while done < padded:
                done += _transfer(os.pwrite, fd, buf[done:padded], start + done)
        finally:
            free.put(buf)
        return end - start

    if version == 2:
        hashes = [_hash_pool().submit(_b3, payload.views)]
    else:
        hashes = [_hash_pool().submit(payload.block_digest, i) for i in payload.blocks]
    writes = [_io_pool().submit(put, at) for at in chunks]
    try:
        for future in writes:
            on_bytes(future.result())
        digest = hashes[0].result() if version == 2 else _combine(f.result() for f in hashes)
    finally:
        _finish(writes + hashes)
    page = arena[:ALIGN]
    page[:HEADER] = head(digest)
    payload.copy_into(page[HEADER:], 0)
    _transfer(os.pwrite, fd, page, 0)
    on_bytes(ALIGN - HEADER)
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)
    return digest


def write_file(
    fd: int,
    parts: list[bytes | memoryview],
    on_bytes: Callable[[int], None],
    head: Callable[[bytes], bytes],
    *,
    version: int,
) -> tuple[bytes, bool]:
    """Write a whole blob file to the new, empty file ``fd``: ``head(digest)`` (`HEADER` bytes,
    saying ``version``), then ``parts``. Return the payload's digest under blob format
    ``version`` and whether O_DIRECT carried it. Durability is the caller's: fsync after."""
    payload = _Payload(parts)
    tally = _Tally(on_bytes)
    if payload.length >= DIRECT_MIN and direct_io and _set_direct(fd, True):
        try:
            return _write_direct(fd, payload, tally, head, version), True
        except _Refused:
            _set_direct(fd, False)
            os.ftruncate(fd, 0)
            tally.restart()
    digest = pwrite_hashed(fd, HEADER, parts, tally, lambda: os.fdatasync(fd), version=version)
    os.pwrite(fd, head(digest), 0)
    return digest, False


def _read_direct(
    fd: int, length: int, on_bytes: Callable[[int], None], version: int
) -> tuple[memoryview, bytes]:
    size = HEADER + length
    whole = memoryview(_private(_round_up(size)))

    def get(at: int) -> int:
        want = min(at + CHUNK, size) - at
        end = min(at + CHUNK, whole.nbytes)
        got = 0
        while got < want:
            n = _transfer(os.preadv, fd, [whole[at + got : end]], at + got)
            got += n
            if not n or n % ALIGN:  # end of file: an O_DIRECT read cannot resume off-alignment
                break
        if got < want:
            raise EOFError(f"blob ends after {at + got - HEADER} of {length} bytes")
        return want - max(0, HEADER - at)  # payload bytes

    reads = [_io_pool().submit(get, at) for at in range(0, size, CHUNK)]
    hashes: list[Future[bytes]] = []
    starts = iter(range(HEADER, size, BLOCK))
    block = next(starts, None)
    b3 = blake3() if version == 2 else None
    hashed = HEADER
    try:
        for i, future in enumerate(reads):
            on_bytes(future.result())
            landed = min((i + 1) * CHUNK, size)  # every byte below this is in memory
            if b3 is not None:
                b3.update(whole[hashed:landed])  # in order, while later reads land
                hashed = landed
                continue
            while block is not None and min(block + BLOCK, size) <= landed:
                hashes.append(_hash_pool().submit(_sha, whole[block : min(block + BLOCK, size)]))
                block = next(starts, None)
        digest = bytes(b3.digest()) if b3 is not None else _combine(f.result() for f in hashes)
    finally:
        _finish(reads + hashes)
    return whole[HEADER:size], digest


def read_file(
    fd: int, length: int, on_bytes: Callable[[int], None], *, version: int
) -> tuple[memoryview, bytes, bool]:
    """Read the ``length``-byte payload of the blob file ``fd`` (header checked by the caller)
    into fresh private memory. Return it, its digest under blob format ``version`` (computed over
    exactly those bytes, read once) and whether O_DIRECT carried it."""
    tally = _Tally(on_bytes)
    if length >= DIRECT_MIN and direct_io and _set_direct(fd, True):
        try:
            return (*_read_direct(fd, length, tally, version), True)
        except _Refused:
            _set_direct(fd, False)
            tally.restart()
    buf = allocate(length)
    return buf, pread_hashed(fd, HEADER, buf, tally, version=version), False
