"""The blob digest is the same however the payload is split into parts, and matches its spec:
version 1, SHA-256 over the SHA-256s of 8 MiB blocks; version 2, plain BLAKE3 (``b3sum``)."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from cave.checkpoint import _blobio


def spec(data: bytes, version: int) -> bytes:
    """Each version's digest, computed here from its definition, not by the module under test."""
    if version == 2:
        import blake3

        return blake3.blake3(data).digest()
    block = _blobio.BLOCK
    blocks = (data[i : i + block] for i in range(0, len(data), block))
    return hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).digest()


@pytest.mark.parametrize("version", [1, 2])
def test_digest_is_independent_of_part_boundaries_and_matches_the_definition(tmp_path, version):
    block = _blobio.BLOCK
    data = os.urandom(3 * block + 12345)
    expect = spec(data, version)
    rng = random.Random(7)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(data)), 6)) + [block, 2 * block - 1]
        cuts = sorted(set(cuts))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert _blobio.digest_of([memoryview(p) for p in parts], version=version) == expect
    empty_parts = [b"", data[:5], memoryview(b""), memoryview(data)[5:block], b"", data[block:]]
    assert _blobio.digest_of(empty_parts, version=version) == expect
    path = tmp_path / "blob"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        parts = [data[:100], memoryview(data)[100:]]
        sync = lambda: os.fdatasync(fd)  # noqa: E731
        assert _blobio.pwrite_hashed(fd, 64, parts, lambda n: None, sync, version=version) == expect
        back = _blobio.allocate(len(data))
        assert _blobio.pread_hashed(fd, 64, back, lambda n: None, version=version) == expect
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

    assert _blobio.read_hashed(readinto, buf, lambda n: None, version=version) == expect
    assert bytes(buf) == data
    for small in (b"small", b""):
        assert _blobio.digest_of([small], version=version) == spec(small, version)


def test_new_blob_files_are_version_2_where_blake3_is_installed():
    pytest.importorskip("blake3")
    assert _blobio.write_version() == 2
    tag = bytes(range(32))
    raw = _blobio.header(tag, 123, 2)
    assert _blobio.parse_header(raw) == (tag, 123, 2)
    with pytest.raises(ValueError, match="bad magic or version"):
        _blobio.parse_header(raw[:8] + (3).to_bytes(4, "little") + raw[12:])
