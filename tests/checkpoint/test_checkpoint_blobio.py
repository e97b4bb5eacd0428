"""The blob digest is the same however the payload is split into parts, and matches its spec."""

from __future__ import annotations

import hashlib
import os
import random

from cave.checkpoint import _blobio


def test_digest_is_independent_of_part_boundaries_and_matches_the_definition(tmp_path):
    block = _blobio.BLOCK
    data = os.urandom(3 * block + 12345)
    spec = hashlib.sha256(
        b"".join(hashlib.sha256(data[i : i + block]).digest() for i in range(0, len(data), block))
    ).digest()
    rng = random.Random(7)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(data)), 6)) + [block, 2 * block - 1]
        cuts = sorted(set(cuts))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert _blobio.digest_of([memoryview(p) for p in parts]) == spec
    empty_parts = [b"", data[:5], memoryview(b""), memoryview(data)[5:block], b"", data[block:]]
    assert _blobio.digest_of(empty_parts) == spec
    path = tmp_path / "blob"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        parts = [data[:100], memoryview(data)[100:]]
        assert (
            _blobio.pwrite_hashed(fd, 64, parts, lambda n: None, lambda: os.fdatasync(fd)) == spec
        )
        back = _blobio.allocate(len(data))
        assert _blobio.pread_hashed(fd, 64, back, lambda n: None) == spec
        assert bytes(back) == data and path.stat().st_size == 64 + len(data)
    finally:
        os.close(fd)
    buf = _blobio.allocate(len(data))
    src = memoryview(data)
    pos = 0

    def readinto(view: memoryview) -> int:
        nonlocal pos
        n = min(view.nbytes, 1_000_003, len(data) - pos)
        view[:n] = src[pos : pos + n]
        pos += n
        return n

    assert _blobio.read_hashed(readinto, buf, lambda n: None) == spec and bytes(buf) == data
    assert (
        _blobio.digest_of([b"small"]) == hashlib.sha256(hashlib.sha256(b"small").digest()).digest()
    )
