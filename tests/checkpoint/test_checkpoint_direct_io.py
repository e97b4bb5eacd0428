"""Large blob files move with O_DIRECT where the filesystem takes it, through the page cache where
it does not, and both ways write and read the same files (version 2, BLAKE3, as saves write them
now; version 1, SHA-256 blocks, as earlier releases did) with the same digests."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import mmap
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from cave.checkpoint import SessionStore, _blobfile, _blobio
from cave.checkpoint._local import LocalBackend
from cave.checkpoint._signing import Signer

BLOCK, CHUNK, ALIGN = _blobio.BLOCK, _blobfile.CHUNK, _blobfile.ALIGN
TAG = bytes(range(32))
LENGTHS = [
    BLOCK,  # the smallest payload that goes direct; its file ends 64 bytes past a chunk
    BLOCK + 1,  # one byte past a block: a last block of one byte
    3 * CHUNK - 64,  # the file ends exactly on a chunk boundary
    2 * BLOCK + 513,  # not a multiple of 512
]


def spec_digest(data: bytes, version: int = 1) -> bytes:
    if version == 2:
        import blake3

        return blake3.blake3(data).digest()
    blocks = (data[i : i + BLOCK] for i in range(0, len(data), BLOCK))
    return hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).digest()


def old_header(tag: bytes, length: int, version: int = 1) -> bytes:
    """The header, spelled out here so that a format change cannot go unnoticed."""
    return b"CAVEBLOB" + struct.pack("<II", version, 0) + tag + struct.pack("<Q", length) + bytes(8)


def takes_direct(directory: Path) -> bool:
    """Whether this filesystem accepts O_DIRECT (asked without the module under test)."""
    probe = directory / "probe"
    probe.write_bytes(bytes(ALIGN))
    try:
        fd = os.open(probe, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        assert exc.errno == errno.EINVAL
        return False
    os.close(fd)
    return True


def enforces_alignment(directory: Path) -> bool:
    """Whether O_DIRECT here refuses a transfer at an offset that is not a multiple of 512."""
    buf = mmap.mmap(-1, ALIGN)
    fd = os.open(directory / "probe", os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwrite(fd, memoryview(buf)[:512], 64)
    except OSError as exc:
        assert exc.errno == errno.EINVAL
        return True
    finally:
        os.close(fd)
    return False


def split(data: bytes) -> list[bytes | memoryview]:
    """Parts as a pickle gives them: a small head, then views whose seams fall off any boundary."""
    view = memoryview(data)
    cuts = sorted({100, ALIGN - 64 + 7, CHUNK + 3, len(data) // 2 + 1, len(data)})
    return [data[:100]] + [view[a:b] for a, b in itertools.pairwise(cuts)]


def write(path: Path, data: bytes, version: int = 1) -> tuple[bytes, bool, list[int]]:
    counts: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        digest, direct = _blobfile.write_file(
            fd,
            split(data),
            counts.append,
            lambda d: old_header(TAG, len(data), version),
            version=version,
        )
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest, direct, counts


def read(path: Path, length: int, version: int = 1) -> tuple[memoryview, bytes, bool, list[int]]:
    counts: list[int] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        buf, sha, direct = _blobfile.read_file(fd, length, counts.append, version=version)
    finally:
        os.close(fd)
    return buf, sha, direct, counts


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "page-cache"])
def test_round_trip_of_odd_lengths_writes_exact_files(tmp_path, monkeypatch, direct_io, version):
    monkeypatch.setattr(_blobfile, "direct_io", direct_io)
    expect_direct = direct_io and takes_direct(tmp_path)
    for length in LENGTHS:
        data = os.urandom(length)
        path = tmp_path / f"blob-{length}"
        digest, direct, counts = write(path, data, version)
        assert (digest, direct) == (spec_digest(data, version), expect_direct), length
        assert sum(counts) == length  # progress counts each payload byte once
        raw = path.read_bytes()  # exact: header, payload, no padding left behind
        assert raw == old_header(TAG, length, version) + data

        buf, sha, direct, counts = read(path, length, version)
        assert (sha, direct, sum(counts)) == (digest, expect_direct, length), length
        assert buf.nbytes == length and bytes(buf) == data
        if direct:  # page + 64: arrays over it keep the payload's 64-byte alignment
            assert np.frombuffer(buf, np.uint8).ctypes.data % 64 == 0


def test_each_way_reads_what_the_other_wrote(tmp_path, monkeypatch):
    data = os.urandom(BLOCK + 12345)
    monkeypatch.setattr(_blobfile, "direct_io", True)
    digest, _direct, _counts = write(tmp_path / "direct", data)
    monkeypatch.setattr(_blobfile, "direct_io", False)
    assert write(tmp_path / "cached", data)[:2] == (digest, False)
    assert (tmp_path / "direct").read_bytes() == (tmp_path / "cached").read_bytes()
    buf, sha, direct, _counts = read(tmp_path / "direct", len(data))
    assert (sha, direct, bytes(buf)) == (digest, False, data)
    monkeypatch.setattr(_blobfile, "direct_io", True)
    buf, sha, _direct, _counts = read(tmp_path / "cached", len(data))
    assert (sha, bytes(buf)) == (digest, data)


def test_a_refused_transfer_is_redone_through_the_page_cache(tmp_path, monkeypatch):
    """Provoke a real EINVAL from the kernel: with 64-byte "alignment" the first chunk's write
    starts at offset 64 and the last read's length is not a multiple of 512. Filesystems that
    do not check alignment (tmpfs) just take the transfers; the files come out right either way."""
    data = os.urandom(BLOCK + 4321)
    direct_ok = takes_direct(tmp_path)
    expect_direct = direct_ok and not enforces_alignment(tmp_path)
    monkeypatch.setattr(_blobfile, "ALIGN", 64)
    digest, direct, counts = write(tmp_path / "blob", data)
    assert (digest, direct, sum(counts)) == (spec_digest(data), expect_direct, len(data))
    assert (tmp_path / "blob").read_bytes() == old_header(TAG, len(data)) + data

    buf, sha, direct, counts = read(tmp_path / "blob", len(data))
    assert (sha, direct, sum(counts)) == (digest, expect_direct, len(data))
    assert bytes(buf) == data


def test_direct_read_buffer_is_private_and_a_short_file_is_an_error(tmp_path):
    data = os.urandom(BLOCK + 1)
    write(tmp_path / "blob", data)
    buf = read(tmp_path / "blob", len(data))[0]
    pid = os.fork()
    if pid == 0:  # child: scribble over the verified buffer, then leave without any cleanup
        buf[:4] = b"evil"
        os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert bytes(buf[:4]) == data[:4]

    os.truncate(tmp_path / "blob", _blobio.HEADER + len(data) - 1)
    with pytest.raises(EOFError):
        read(tmp_path / "blob", len(data))


def test_version_1_blob_from_an_earlier_save_restores_and_tampering_is_seen(tmp_path):
    """A blob file as earlier releases wrote it (plain writes through the page cache)."""
    backend = LocalBackend(tmp_path / "store")
    signer = Signer(b"k" * 32, backend.session_id())
    data = os.urandom(2 * BLOCK + 777)
    digest = spec_digest(data)
    path = backend.blob_dir / digest.hex()[:2] / digest.hex()
    path.parent.mkdir(mode=0o700)
    with open(path, "wb") as f:
        f.write(old_header(signer.blob_tag(digest, len(data)), len(data)))
        f.write(data)
    tag, payload, sha, version = backend.read_blob(digest.hex(), lambda n: None)
    assert sha == digest and bytes(payload) == data and version == 1
    assert signer.check_blob(digest, len(data), tag)

    with open(path, "r+b") as f:  # one flipped bit in the middle of the second block
        f.seek(_blobio.HEADER + BLOCK + 1000)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    _tag, _payload, sha, _version = backend.read_blob(digest.hex(), lambda n: None)
    assert sha != digest


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "page-cache"])
def test_store_round_trip_of_a_large_array(tmp_path, monkeypatch, direct_io):
    monkeypatch.setattr(_blobfile, "direct_io", direct_io)
    store = SessionStore(tmp_path / "store", secret=b"k" * 32)
    big = np.random.default_rng(1).random(3 * BLOCK // 8 + 3)
    store.save("cp", {"big": big, "small": [1, 2]}, {})
    assert not list((tmp_path / "store" / "blobs" / "tmp").iterdir())
    restored = store.load("cp").namespace
    assert np.array_equal(restored["big"], big) and restored["small"] == [1, 2]
    restored["big"][0] = -1.0  # writable, and not shared with the saved array
    assert big[0] != -1.0


def test_many_blob_files_read_at_once_each_get_their_own_bytes_and_errors(tmp_path):
    backend = LocalBackend(tmp_path / "store")
    signer = Signer(b"k" * 32, backend.session_id())
    sizes = [300 << 10, BLOCK + 5, (1 << 20) + 3, BLOCK + 4096, 2 * BLOCK + 1, 400 << 10, BLOCK]
    datas = [os.urandom(n) for n in sizes]
    written = [backend.write_blob([d[:10], memoryview(d)[10:]], signer, lambda n: None)
               for d in datas]  # fmt: skip
    assert all(new for _digest, new in written)  # all files (> INLINE_MAX), none in SQLite
    digests = [digest for digest, _new in written]
    missing, short = digests[1], digests[5]
    (backend.blob_dir / missing[:2] / missing).unlink()
    os.truncate(backend.blob_dir / short[:2] / short, _blobio.HEADER + sizes[5] - 1)
    counts: list[int] = []
    out = backend.read_blobs(digests, counts.append)
    assert set(out) == set(digests)
    assert isinstance(out[missing], FileNotFoundError)
    assert isinstance(out[short], ValueError)  # its header says one byte more than it holds
    for digest, data in zip(digests, datas, strict=True):
        if digest in (missing, short):
            continue
        tag, payload, sha, version = out[digest]  # type: ignore[misc]
        assert sha.hex() == digest and bytes(payload) == data and version == 2
        assert signer.check_blob(sha, len(data), tag, version)
        assert not signer.check_blob(sha, len(data), tag, 1)  # the tag binds the version
    assert sum(counts) == sum(len(d) for d in datas) - sizes[1] - sizes[5]


def test_a_descriptor_the_kernel_will_not_make_direct_is_left_as_it_was(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)  # directories take no O_DIRECT (EINVAL from fcntl)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        assert _blobfile._set_direct(fd, True) is False
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags
    finally:
        os.close(fd)
