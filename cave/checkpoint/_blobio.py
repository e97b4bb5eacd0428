"""Blob files: a 64-byte header carrying the HMAC tag, then the payload; hashing overlaps I/O.

    b"CAVEBLOB" | u32 version | u32 0 | tag (32) | u64 payload length | 8 x 0 | payload

The file's name is the SHA-256 of the payload. SHA-256 runs at about disk speed, so it is computed
in the caller's thread while a helper thread writes (or reads) the previous chunk; ``hashlib`` and
file I/O both release the GIL.
"""

from __future__ import annotations

import hashlib
import queue
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

MAGIC = b"CAVEBLOB"
VERSION = 1
HEADER = 64
CHUNK = 16 << 20
SYNC_EVERY = 128 << 20
_SMALL = 1 << 20
_LAYOUT = struct.Struct("<8sII32sQ8x")


def header(tag: bytes, length: int) -> bytes:
    return _LAYOUT.pack(MAGIC, VERSION, 0, tag, length)


def parse_header(raw: bytes) -> tuple[bytes, int]:
    """(tag, payload length); raises ValueError on anything that is not our header."""
    if len(raw) != HEADER:
        raise ValueError("file shorter than a blob header")
    magic, version, _zero, tag, length = _LAYOUT.unpack(raw)
    if magic != MAGIC or version != VERSION:
        raise ValueError("not a Cave blob (bad magic or version)")
    return tag, length


def size_of(parts: Iterable[bytes | memoryview]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)


def _chunks(parts: Iterable[bytes | memoryview]) -> Iterator[memoryview]:
    for part in parts:
        view = memoryview(part).cast("B") if isinstance(part, memoryview) else memoryview(part)
        for start in range(0, view.nbytes, CHUNK):
            yield view[start : start + CHUNK]


def sha256_of(parts: Iterable[bytes | memoryview]) -> bytes:
    h = hashlib.sha256()
    for chunk in _chunks(parts):
        h.update(chunk)
    return h.digest()


def write_hashed(
    write: Callable[[memoryview], Any],
    parts: list[bytes | memoryview],
    on_bytes: Callable[[int], None],
    sync: Callable[[], Any] | None = None,
) -> bytes:
    """Write ``parts`` through ``write`` and return their SHA-256; I/O overlaps the hashing.

    ``sync`` (an fdatasync) is called by the writer every `SYNC_EVERY` bytes, so that writeback
    to disk also overlaps the hashing instead of all happening in the final fsync.
    """
    h = hashlib.sha256()
    if size_of(parts) <= _SMALL:
        for chunk in _chunks(parts):
            h.update(chunk)
            write(chunk)
            on_bytes(chunk.nbytes)
        return h.digest()
    pending: queue.Queue[memoryview | None] = queue.Queue(maxsize=SYNC_EVERY // CHUNK)
    errors: list[BaseException] = []

    def writer() -> None:
        unsynced = 0
        while (chunk := pending.get()) is not None:
            if not errors:
                try:
                    write(chunk)
                    unsynced += chunk.nbytes
                    if sync is not None and unsynced >= SYNC_EVERY:
                        sync()
                        unsynced = 0
                except BaseException as exc:
                    errors.append(exc)

    thread = threading.Thread(target=writer, name="cave-checkpoint-writer", daemon=True)
    thread.start()
    try:
        for chunk in _chunks(parts):
            h.update(chunk)
            pending.put(chunk)
            on_bytes(chunk.nbytes)
            if errors:
                break
    finally:
        pending.put(None)
        thread.join()
    if errors:
        raise errors[0]
    return h.digest()


def allocate(length: int) -> memoryview:
    """A writable buffer for a payload.

    A bytearray: reading into it measured 10x faster than into an anonymous ``mmap`` (1 GiB:
    0.11 s against 1.2 s, page-fault cost). Its data is 16-byte aligned, enough for NumPy.
    """
    return memoryview(bytearray(length))


def read_hashed(
    readinto: Callable[[memoryview], int],
    buf: memoryview,
    on_bytes: Callable[[int], None],
) -> bytes:
    """Fill ``buf`` from ``readinto``; return its SHA-256. EOFError if the data ends early."""
    h = hashlib.sha256()
    total = buf.nbytes

    def fill(view: memoryview) -> None:
        got = 0
        while got < view.nbytes:
            n = readinto(view[got:])
            if not n:
                raise EOFError(f"blob ends after {got} of {view.nbytes} bytes")
            got += n

    if total <= _SMALL:
        fill(buf)
        h.update(buf)
        on_bytes(total)
        return h.digest()
    ready: queue.Queue[tuple[int, int] | BaseException | None] = queue.Queue()

    def reader() -> None:
        try:
            for start in range(0, total, CHUNK):
                end = min(start + CHUNK, total)
                fill(buf[start:end])
                ready.put((start, end))
            ready.put(None)
        except BaseException as exc:
            ready.put(exc)

    thread = threading.Thread(target=reader, name="cave-checkpoint-reader", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            start, end = item
            h.update(buf[start:end])
            on_bytes(end - start)
    finally:
        thread.join()
    return h.digest()
