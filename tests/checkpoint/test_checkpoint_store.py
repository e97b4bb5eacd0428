"""SessionStore on a real directory: round trip, references, unpicklable objects, reducers, gc."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading

import numpy as np
import pandas as pd
import pytest

from cave._errors import CheckpointNotFound, ConfigError
from cave.checkpoint import (
    CheckpointStore,
    InvalidCheckpointName,
    SessionStore,
    load_or_create_secret,
    register,
    unregister,
)

SECRET = b"s" * 32


def stored_blobs(root) -> int:
    """Blob files plus the small blobs kept in SQLite."""
    with sqlite3.connect(root / "checkpoints.sqlite") as db:
        inline = db.execute("SELECT count(*) FROM blobs").fetchone()[0]
    db.close()
    return inline + sum(1 for _ in (root / "blobs").glob("??/*"))


def agent_namespace() -> dict:
    ns: dict = {}
    exec(
        "import numpy as np\n"
        "import pandas as pd\n"
        "df = pd.DataFrame({'a': np.arange(1000.0), 'b': np.arange(1000) % 7})\n"
        "arr = np.linspace(0, 1, 50_000)\n"
        "alias = arr\n"
        "holder = {'frame': df, 'n': 3}\n"
        "scale = 2\n"
        "def total(k=1):\n"
        "    return float(df.a.sum()) * scale * k\n"
        "class Counter:\n"
        "    def __init__(self):\n"
        "        self.n = 0\n"
        "    def bump(self):\n"
        "        self.n += scale\n"
        "        return self.n\n"
        "counter = Counter()\n"
        "counter.bump()\n"
        "ring_a = []\n"
        "ring_b = [ring_a]\n"
        "ring_a.append(ring_b)\n",
        ns,
    )
    return ns


def test_protocol_is_satisfied(tmp_path):
    assert isinstance(SessionStore(tmp_path / "s", secret=SECRET), CheckpointStore)


def test_round_trip_values_identity_and_globals(tmp_path):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    ns = agent_namespace()
    state = {"messages": [{"role": "user", "content": "hi"}], "grants": ["fs.read:*"]}
    info = store.save("one", ns, state)
    assert info.name == "one" and info.seq == 1 and info.parent is None
    assert info.unpicklable == ()

    into: dict = {"__builtins__": __builtins__}
    restored = store.load("one", into=into)
    assert restored.problems == []
    assert restored.state == state
    n = restored.namespace
    assert n is into
    pd.testing.assert_frame_equal(n["df"], ns["df"])
    np.testing.assert_array_equal(n["arr"], ns["arr"])
    assert n["alias"] is n["arr"]  # two names, one object
    assert n["holder"]["frame"] is n["df"]  # reference to another top-level object kept
    assert n["ring_a"][0] is n["ring_b"] and n["ring_b"][0] is n["ring_a"]  # cycle across names
    # Functions and methods see the restored namespace as their globals, not a frozen copy.
    assert n["total"].__globals__ is into
    assert n["total"]() == ns["total"]()
    into["scale"] = 10
    assert n["total"]() == 10 * float(ns["df"].a.sum())
    assert n["counter"].n == 2 and n["counter"].bump() == 12
    assert n["np"] is np  # modules come back by reference
    assert n["arr"].flags.writeable  # restored arrays are ordinary writable arrays
    n["arr"][0] = 5.0


def test_unpicklable_objects_are_reported_and_the_rest_saved(tmp_path):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    ns = {
        "lock": threading.Lock(),
        "gen": (i for i in range(3)),
        "needs_lock": {"l": 1},
        "fine": [1, 2, 3],
    }
    ns["needs_lock"]["lock"] = ns["lock"]  # refers to an unpicklable top-level object
    info = store.save("x", ns, {})
    by_name = {p.name: p for p in info.unpicklable}
    assert set(by_name) == {"lock", "gen", "needs_lock"}
    assert by_name["lock"].type == "_thread.lock"
    assert "pickle" in by_name["lock"].reason
    assert by_name["gen"].type == "generator"
    assert "'lock'" in by_name["needs_lock"].reason
    assert store.list()[0].unpicklable == info.unpicklable
    restored = store.load("x")
    assert dict(restored.namespace) == {"fine": [1, 2, 3]}


def test_skip_and_dunders_are_left_out_and_skipped_names_resolve_on_restore(tmp_path):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    primitive = threading.Lock()  # stands for a primitive the session re-creates itself
    ns = {"__name__": "agent", "fs": primitive, "uses_fs": {"fs": primitive}, "x": 1}
    info = store.save("x", ns, {}, skip={"fs"})
    assert info.unpicklable == () and info.objects == 2
    fresh = threading.Lock()
    restored = store.load("x", into={"fs": fresh})
    assert restored.problems == []
    assert restored.namespace["uses_fs"]["fs"] is fresh
    bare = store.load("x")  # without the primitive, only the dependent object fails
    assert [p.name for p in bare.problems] == ["uses_fs"]
    assert bare.namespace["x"] == 1


def test_sqlite_connections_reconnect(tmp_path):
    path = tmp_path / "data.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.commit()
    mem = sqlite3.connect(":memory:")
    mem.execute("CREATE TABLE m (y)")
    mem.execute("INSERT INTO m VALUES ('kept')")
    store = SessionStore(tmp_path / "s", secret=SECRET)
    store.save("db", {"conn": conn, "mem": mem}, {})
    conn.close()
    mem.close()
    restored = store.load("db").namespace
    assert restored["conn"].execute("SELECT x FROM t").fetchall() == [(42,)]
    assert restored["mem"].execute("SELECT y FROM m").fetchall() == [("kept",)]
    restored["conn"].close()
    restored["mem"].close()


def test_open_files_reconnect_by_path_mode_and_position_without_reading_them(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("line\n" * 2_000_000)  # 10 MB: must not end up in the checkpoint
    text = open(big)  # noqa: SIM115
    text.readline()
    binary = open(big, "rb")  # noqa: SIM115
    binary.seek(12345)
    out = open(tmp_path / "out.txt", "w")  # noqa: SIM115
    out.write("first part\n")  # still in the buffer: the save flushes it
    log = open(tmp_path / "log.txt", "a")  # noqa: SIM115
    closed = open(tmp_path / "log.txt")  # noqa: SIM115
    closed.close()
    store = SessionStore(tmp_path / "s", secret=SECRET)
    info = store.save(
        "files", {"text": text, "binary": binary, "out": out, "log": log, "closed": closed}, {}
    )
    assert info.unpicklable == ()
    assert info.size < 20_000
    positions = (text.tell(), binary.tell(), out.tell())
    for f in (text, binary, out, log):
        f.close()

    r = store.load("files").namespace
    assert r["text"].tell() == positions[0] and r["text"].readline() == "line\n"
    assert r["binary"].tell() == positions[1] and r["binary"].mode == "rb"
    assert r["out"].tell() == positions[2]
    r["out"].write("second part\n")  # reopened r+, not w: the first part survives
    r["out"].close()
    assert (tmp_path / "out.txt").read_text() == "first part\nsecond part\n"
    r["log"].write("appended\n")
    r["log"].close()
    assert (tmp_path / "log.txt").read_text() == "appended\n"
    assert r["closed"].closed
    r["text"].close()
    r["binary"].close()


class Handle:
    """Stands for a client object that holds a live connection."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.live = threading.Lock()  # unpicklable on purpose


def test_register_user_reducer(tmp_path):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    ns = {"h": Handle("db.example:5432")}
    assert [p.name for p in store.save("before", ns, {}).unpicklable] == ["h"]
    register(Handle, lambda h: h.address, Handle)
    try:
        assert store.save("after", ns, {}).unpicklable == ()
        restored = store.load("after").namespace["h"]
        assert isinstance(restored, Handle) and restored.address == "db.example:5432"
        unregister(Handle)
        problems = store.load("after").problems
        assert [p.name for p in problems] == ["h"] and "register" in problems[0].reason
    finally:
        unregister(Handle)


def test_list_diff_remove_gc(tmp_path):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    ns = {"a": np.arange(10_000), "b": "text", "c": [1]}
    store.save("v1", ns, {"messages": ["hi"], "policy": {"x": 1}})
    ns["a"] = ns["a"] * 2
    del ns["b"]
    ns["d"] = {"new": True}
    store.save(None, ns, {"messages": ["hi", "there"], "policy": {"x": 1}})
    infos = store.list()
    assert [i.name for i in infos] == ["v1", "auto-2"]
    second = infos[1]
    assert second.parent == "v1" and second.state_changed
    assert second.changes.added == ("d",)
    assert second.changes.changed == ("a",)
    assert second.changes.removed == ("b",)
    d = store.diff("v1", "auto-2")
    assert d.changes == second.changes and d.unchanged == ("c",)
    assert d.state_keys_changed == ("messages",)

    blobs_before = stored_blobs(tmp_path / "s")
    store.remove("v1")
    with pytest.raises(CheckpointNotFound):
        store.load("v1")
    with pytest.raises(CheckpointNotFound):
        store.remove("v1")
    (tmp_path / "s" / "blobs" / "tmp" / "123-dead.tmp").write_bytes(b"partial")
    report = store.gc()
    assert report.removed_blobs == 3  # v1's `a`, `b` and state; the shared `c` stays
    assert report.removed_temp == 1
    blobs_after = stored_blobs(tmp_path / "s")
    assert blobs_after == blobs_before - 3
    assert store.verify().ok
    assert store.load("auto-2").namespace["d"] == {"new": True}


def test_saving_under_an_existing_name_replaces_it(tmp_path):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    store.save("same", {"x": 1}, {})
    store.save("same", {"x": 2}, {})
    assert [i.name for i in store.list()] == ["same"]
    assert store.load("same").namespace["x"] == 2


def test_bad_names_and_bad_state_are_refused(tmp_path):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    for bad in ("", "../x", "a/b", ".hidden", "x" * 200):
        with pytest.raises(InvalidCheckpointName):
            store.save(bad, {}, {})
    with pytest.raises(Exception, match="JSON"):
        store.save("x", {}, {"obj": object()})


def test_store_and_key_file_permissions(tmp_path, monkeypatch):
    monkeypatch.setenv("CAVE_CONFIG_DIR", str(tmp_path / "cfg"))
    store = SessionStore(tmp_path / "s")
    key = tmp_path / "cfg" / "checkpoint_secret"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    store.save("x", {"v": 1}, {})
    assert SessionStore(tmp_path / "s").load("x").namespace["v"] == 1  # same key reused
    assert load_or_create_secret() == load_or_create_secret()
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        SessionStore(tmp_path / "s")


def test_progress_callback_and_worker_thread(tmp_path):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    ns = {"a": np.ones(3_000_000)}
    seen: list[tuple[int, int]] = []
    result: dict = {}
    t = threading.Thread(
        target=lambda: result.update(
            info=store.save("t", ns, {}, progress=lambda d, n: seen.append((d, n)))
        )
    )
    t.start()
    t.join()
    assert result["info"].written >= 24_000_000
    assert seen and seen[-1][0] == seen[-1][1] == result["info"].written
    loaded: list[tuple[int, int]] = []
    store.load("t", progress=lambda d, n: loaded.append((d, n)))
    assert loaded[-1][0] == loaded[-1][1]


def test_progress_bar(tmp_path, capfd):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    store.save("bar", {"a": np.ones(2_000_000)}, {}, progress=True)
    store.load("bar", progress=True)
    err = capfd.readouterr().err
    assert "checkpoint save" in err and "checkpoint restore" in err


def test_prune_keeps_named_and_the_newest_auto_checkpoints(tmp_path):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    for i in range(5):
        store.save(None, {"i": np.full(100_000, i)}, {})
        if i == 1:
            store.save("keepme", {"i": np.full(100_000, i)}, {})
    assert store.prune(2) == ["auto-1", "auto-2", "auto-4"]
    assert [i.name for i in store.list()] == ["keepme", "auto-5", "auto-6"]
    assert store.gc().removed_blobs >= 2
    assert store.verify().ok
    assert store.load("auto-6").namespace["i"][0] == 4


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "page-cache"])
def test_checkpoints_of_blob_format_1_still_load_and_are_reused(tmp_path, monkeypatch, direct_io):
    """Checkpoints written before BLAKE3 (blob format 1, SHA-256 blocks) restore and verify, and
    a later save of the unchanged object refers to the old blob instead of writing it again."""
    from cave.checkpoint import _blobfile, _blobio

    monkeypatch.setattr(_blobfile, "direct_io", direct_io)
    big = np.random.default_rng(5).random(3 * _blobio.BLOCK // 8 + 11)
    store = SessionStore(tmp_path / "s", secret=SECRET)
    monkeypatch.setattr(_blobio, "_write_version", 1)
    store.save("old", {"big": big, "small": [1, 2]}, {"k": 1})
    (old_file,) = (tmp_path / "s" / "blobs").glob("??/*")
    assert old_file.read_bytes()[8:12] == (1).to_bytes(4, "little")
    monkeypatch.setattr(_blobio, "_write_version", None)  # back to the default: format 2
    assert _blobio.write_version() == 2
    back = store.load("old")
    assert np.array_equal(back.namespace["big"], big) and back.state == {"k": 1}
    assert store.verify("old").ok
    info = store.save("new", {"big": big, "small": [1, 2, 3]}, {"k": 2})
    assert info.changes.changed == ("small",) and list((tmp_path / "s" / "blobs").glob("??/*")) == [
        old_file
    ]
    other = big.copy()
    other[0] = -1.0
    store.save("newer", {"big": other}, {})
    files = {p.read_bytes()[8:12] for p in (tmp_path / "s" / "blobs").glob("??/*")}
    assert files == {(1).to_bytes(4, "little"), (2).to_bytes(4, "little")}
    assert store.load("newer").namespace["big"][0] == -1.0 and store.verify().ok
