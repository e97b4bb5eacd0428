"""Incremental saves: unchanged objects are neither copied nor written again."""

from __future__ import annotations

import sqlite3
import tracemalloc

import numpy as np
import pandas as pd

from cave.checkpoint import SessionStore

SECRET = b"i" * 32
MB = 1 << 20


def blob_count(root) -> int:
    """Blob files plus the small blobs kept in SQLite."""
    with sqlite3.connect(root / "checkpoints.sqlite") as db:
        inline = db.execute("SELECT count(*) FROM blobs").fetchone()[0]
    db.close()
    return inline + sum(1 for _ in (root / "blobs").glob("??/*"))


def ten_large() -> dict:
    rng = np.random.default_rng(0)
    ns: dict = {f"arr{i}": rng.random(MB // 8 * 4) for i in range(9)}  # 4 MiB each
    ns["frame"] = pd.DataFrame(rng.random((MB // 8, 4)), columns=list("abcd"))
    ns["small"] = {"k": [1, 2, 3]}
    return ns


def test_nothing_changed_writes_no_blob_and_copies_nothing(tmp_path):
    root = tmp_path / "s"
    store = SessionStore(root, secret=SECRET)
    ns = ten_large()
    first = store.save("one", ns, {"m": 1})
    assert first.blobs_written == 12  # 11 entries + state
    files = blob_count(root)

    tracemalloc.start()
    try:
        second = store.save("two", ns, {"m": 1})
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert second.written == 0 and second.blobs_written == 0
    assert not second.changes and not second.state_changed
    assert blob_count(root) == files
    # 40 MiB of buffers were fingerprinted in place: the save allocated almost nothing.
    assert peak < 2 * MB, peak


def test_changing_one_of_ten_large_objects_writes_one_blob(tmp_path):
    root = tmp_path / "s"
    store = SessionStore(root, secret=SECRET)
    ns = ten_large()
    store.save("one", ns, {})
    files = blob_count(root)

    ns["arr3"][12345] = -1.0  # in place: same object, same id, new content
    info = store.save("two", ns, {})
    assert info.blobs_written == 1 and info.changes.changed == ("arr3",)
    assert 4 * MB <= info.written < 4 * MB + 4096
    assert blob_count(root) == files + 1

    ns["frame"].iloc[0, 0] = 99.0  # a DataFrame edited through pandas
    info = store.save("three", ns, {})
    assert info.blobs_written == 1 and info.changes.changed == ("frame",)

    ns["arr3"][12345] = store.load("one").namespace["arr3"][12345]  # back to the old content
    info = store.save("four", ns, {})
    assert info.changes.changed == ("arr3",)
    assert info.blobs_written == 0  # same bytes as a stored blob: content addressing dedups
    np.testing.assert_array_equal(store.load("four").namespace["arr3"], ns["arr3"])


def test_only_the_state_changed(tmp_path):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    ns = ten_large()
    store.save("one", ns, {"messages": ["a"]})
    info = store.save("two", ns, {"messages": ["a", "b"]})
    assert info.blobs_written == 1 and info.state_changed and not info.changes


def test_a_resumed_session_reuses_the_blobs_it_was_restored_from(tmp_path):
    root = tmp_path / "s"
    SessionStore(root, secret=SECRET).save("one", ten_large(), {"m": 1})
    fresh = SessionStore(root, secret=SECRET)  # as in a new kernel: no in-memory cache
    restored = fresh.load("one")
    info = fresh.save("two", restored.namespace, restored.state)
    assert info.blobs_written == 0 and not info.changes
