"""Tampered, foreign and unsigned checkpoints are refused before a single object is unpickled.

`Witness` objects record every unpickling in RAN; each refusal must leave it empty, including
for the objects whose blobs were not touched (everything is verified before anything is loaded).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cave._errors import CheckpointTampered
from cave.checkpoint import CheckpointIncomplete, SessionStore

SECRET = b"k" * 32
RAN: list[int] = []


def _rebuild(n: int) -> Witness:
    RAN.append(n)
    return Witness(n)


class Witness:
    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self):
        return (_rebuild, (self.n,))


@pytest.fixture
def saved(tmp_path) -> tuple[SessionStore, Path]:
    RAN.clear()
    root = tmp_path / "a"
    store = SessionStore(root, secret=SECRET)
    ns = {"first": Witness(1), "big": np.arange(100_000), "second": Witness(2)}
    store.save("cp", ns, {"messages": ["hello"]})
    store.load("cp")  # the untampered checkpoint loads, and the witnesses do record it
    assert sorted(RAN) == [1, 2]
    RAN.clear()
    return store, root


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blobs").glob("??/*"))


def biggest_blob(root: Path) -> Path:
    return max(blob_files(root), key=lambda p: p.stat().st_size)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def refused(store: SessionStore, match: str, exc: type = CheckpointTampered) -> None:
    with pytest.raises(exc, match=match):
        store.load("cp")
    assert RAN == [], "something was unpickled before verification finished"
    assert not store.verify("cp").ok


def test_flip_a_byte_in_a_blob_payload(saved):
    store, root = saved
    flip(biggest_blob(root), 64 + 500_000 // 2)
    refused(store, "does not match its BLAKE3 digest")


def test_relabel_a_blob_as_the_other_format_version(saved):
    """Version 1 and 2 digests are different hash functions; the tag binds which one."""
    store, root = saved
    path = biggest_blob(root)
    data = bytearray(path.read_bytes())
    assert data[8:12] == (2).to_bytes(4, "little")
    data[8:12] = (1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    refused(store, "HMAC tag")


def test_flip_a_byte_in_a_blob_tag(saved):
    store, root = saved
    flip(biggest_blob(root), 20)
    refused(store, "HMAC tag")


def test_truncated_blob(saved):
    store, root = saved
    path = biggest_blob(root)
    path.write_bytes(path.read_bytes()[:-10])
    refused(store, "payload bytes")


def test_edit_a_small_blob_kept_in_sqlite(saved):
    store, root = saved
    with _db(root) as db:
        rows = db.execute("SELECT digest, payload FROM blobs").fetchall()
        assert len(rows) >= 3  # the witnesses and the state are small enough to live there
        for digest, payload in rows:
            edited = bytearray(payload)
            edited[-1] ^= 0x01
            db.execute("UPDATE blobs SET payload = ? WHERE digest = ?", (bytes(edited), digest))
    refused(store, "does not match its SHA-256 digest")  # inline blobs stay format 1


def test_missing_blob(saved):
    store, root = saved
    biggest_blob(root).unlink()
    refused(store, "does not hold", CheckpointIncomplete)


def _db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / "checkpoints.sqlite", isolation_level=None)


def test_edit_a_manifest(saved):
    store, root = saved
    with _db(root) as db:
        (raw,) = db.execute("SELECT manifest FROM checkpoints").fetchone()
        edited = bytes(raw).replace(b'"first"', b'"fIrst"')
        assert edited != bytes(raw)
        db.execute("UPDATE checkpoints SET manifest = ?", (edited,))
    refused(store, "signature does not match")


def test_unsigned_manifest(saved):
    store, root = saved
    with _db(root) as db:
        db.execute("UPDATE checkpoints SET sig = NULL")
    refused(store, "unsigned")


def test_renamed_checkpoint(saved):
    store, root = saved
    store.save("other", {"x": Witness(3)}, {})
    RAN.clear()
    with _db(root) as db:  # make the row called "cp" carry the manifest signed as "other"
        db.execute("DELETE FROM checkpoints WHERE name = 'cp'")
        db.execute("UPDATE checkpoints SET name = 'cp' WHERE name = 'other'")
    refused(store, "signed as 'other'")


def test_another_users_secret(saved):
    _store, root = saved
    intruder = SessionStore(root, secret=b"z" * 32)
    refused(intruder, "signature does not match")


def test_swap_blobs_between_sessions(saved, tmp_path):
    store, root = saved
    other_root = tmp_path / "b"
    other = SessionStore(other_root, secret=SECRET)  # same user, same key, another session
    other.save("cp", {"first": Witness(7), "big": np.arange(100_000) * 3, "second": Witness(8)}, {})
    RAN.clear()
    shutil.copy(biggest_blob(other_root), biggest_blob(root))
    refused(store, "HMAC tag does not match")  # tags are bound to the session id


def test_manifest_from_another_session(saved, tmp_path):
    store, root = saved
    other_root = tmp_path / "b"
    other = SessionStore(other_root, secret=SECRET)
    other.save("cp", {"first": Witness(7)}, {})
    RAN.clear()
    for blob in blob_files(other_root):  # even with all its blobs copied over
        dest = root / blob.relative_to(other_root)
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(blob, dest)
    with _db(other_root) as src, _db(root) as dst:
        row = src.execute("SELECT manifest, sig FROM checkpoints").fetchone()
        dst.execute("UPDATE checkpoints SET manifest = ?, sig = ? WHERE name = 'cp'", row)
    refused(store, "another session")
