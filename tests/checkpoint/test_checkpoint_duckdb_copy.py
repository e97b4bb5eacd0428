"""A file-backed DuckDB database copied into checkpoints when asked (`copy_database`,
``%checkpoint copy``), restored as a new file beside the original, never over anything.

By default a file-backed connection travels as its path (tests/checkpoint/
test_checkpoint_data_reducers.py); these tests cover the switch: snapshot semantics (the copy is
the database at save time, not the file at restore time), where the restored file goes, that no
existing file is replaced, that an unchanged database stores nothing new at the next save, and
the round trip through a real store into a fresh kernel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cave.checkpoint import SessionStore, copy_database
from cave.checkpoint._duckdb import copies, copy_setting
from cave.testing import KernelHarness

duckdb = pytest.importorskip("duckdb")
SECRET = b"d" * 32


def where(con: Any) -> Path:
    row = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return Path(row[0])


def make_db(path: Path) -> Any:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT range AS i FROM range(1000)")
    con.execute("CREATE VIEW v AS SELECT i * 2 AS j FROM t")
    con.execute("CREATE SEQUENCE s START 7")
    return con


def test_by_default_a_file_database_travels_as_its_path(tmp_path):
    con = make_db(tmp_path / "data.duckdb")
    assert not copies(con)
    assert "not copied" in copy_setting(con)
    store = SessionStore(tmp_path / "store", secret=SECRET)
    store.save("a", {"db": con}, {})
    con.execute("INSERT INTO t VALUES (-1)")
    back = store.load("a").namespace["db"]  # the same file: it sees the later insert
    assert where(back) == tmp_path / "data.duckdb"
    assert back.execute("SELECT count(*) FROM t").fetchone() == (1001,)


def test_a_copied_database_restores_as_it_was_saved_beside_the_original(tmp_path, monkeypatch):
    monkeypatch.setenv("CAVE_SESSION_DIR", str(tmp_path / "session"))
    original = tmp_path / "data.duckdb"
    con = make_db(original)
    copy_database(con)
    assert copies(con) and "hold a copy" in copy_setting(con)
    store = SessionStore(tmp_path / "store", secret=SECRET)
    store.save("a", {"db": con}, {})
    assert store.save("again", {"db": con}, {}).blobs_written == 0  # unchanged: same export bytes
    con.execute("INSERT INTO t VALUES (-1)")  # after the save: not in the checkpoint
    con.execute("DROP VIEW v")

    back = store.load("a").namespace["db"]
    assert where(back) == tmp_path / "data.restored-1.duckdb"
    assert back.execute("SELECT count(*), min(i) FROM t").fetchone() == (1000, 0)
    assert back.execute("SELECT max(j) FROM v").fetchone() == (1998,)
    assert back.execute("SELECT nextval('s')").fetchone() == (7,)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (1001,)  # the original: untouched
    assert copies(back)  # the restored connection keeps the setting
    back.execute("INSERT INTO t VALUES (5000)")
    info = store.save("b", {"db": back}, {})
    assert info.changes.changed == ("db",)
    back.close()
    again = store.load("b").namespace["db"]  # a second restore: a second new file
    assert where(again) == tmp_path / "data.restored-2.duckdb"
    assert again.execute("SELECT max(i) FROM t").fetchone() == (5000,)

    copy_database(again, False)  # back to the default
    assert store.save("c", {"db": again}, {}).size < 4096
    assert "not copied" in copy_setting(again)


def test_restore_never_replaces_a_file_and_needs_no_original(tmp_path, monkeypatch):
    session = tmp_path / "session"
    monkeypatch.setenv("CAVE_SESSION_DIR", str(session))
    folder = tmp_path / "data"
    folder.mkdir()
    con = make_db(folder / "sales.db")
    copy_database(con)
    store = SessionStore(tmp_path / "store", secret=SECRET)
    store.save("a", {"db": con}, {})
    taken = folder / "sales.restored-1.db"
    taken.write_bytes(b"someone else's file")
    (folder / "sales.restored-2.db.wal").write_bytes(b"a stray WAL DuckDB would replay")
    back = store.load("a").namespace["db"]
    assert where(back) == folder / "sales.restored-3.db"
    assert taken.read_bytes() == b"someone else's file"
    back.close()

    con.close()  # another machine: the original's directory does not exist
    (folder / "sales.db").unlink()
    folder.rename(tmp_path / "elsewhere")
    back = store.load("a").namespace["db"]
    assert where(back) == session / "restored" / "sales.restored-1.db"
    assert back.execute("SELECT count(*) FROM t").fetchone() == (1000,)


def test_a_read_only_connection_is_copied_and_restored_read_only(tmp_path):
    make_db(tmp_path / "ro.duckdb").close()
    con = duckdb.connect(str(tmp_path / "ro.duckdb"), read_only=True)
    copy_database(con)
    store = SessionStore(tmp_path / "store", secret=SECRET)
    store.save("a", {"db": con}, {})
    back = store.load("a").namespace["db"]
    assert where(back) == tmp_path / "ro.restored-1.duckdb"
    assert back.execute("SELECT count(*) FROM t").fetchone() == (1000,)
    with pytest.raises(duckdb.Error, match="read-only"):
        back.execute("INSERT INTO t VALUES (1)")


def test_only_duckdb_connections_take_the_switch():
    with pytest.raises(TypeError, match=r"takes a DuckDB connection .*not builtins.dict"):
        copy_database({})
    mem = duckdb.connect()
    copy_database(mem)  # accepted: in-memory databases are always copied anyway
    assert "in-memory" in copy_setting(mem)


@pytest.mark.slow
def test_copy_switch_from_a_notebook_round_trips_into_a_fresh_kernel(tmp_path: Path) -> None:
    data = tmp_path / "data.duckdb"

    def kernel(name: str, **env: str) -> KernelHarness:
        ws = tmp_path / name
        ws.mkdir()
        base = {"CAVE_CONFIG_DIR": str(tmp_path / "config"),
                "CAVE_SESSION_DIR": str(ws / "session"),
                "CAVE_CHECKPOINTS": str(tmp_path / "store"),
                "CAVE_AUTOCHECKPOINT": "0"}  # fmt: skip
        return KernelHarness(env={**base, **env}, cwd=ws).start()

    def ok(k: KernelHarness, code: str) -> str:
        cell = k.execute(code, timeout=120)
        assert cell.status == "ok", cell.all_text
        return cell.stdout

    a = kernel("a")
    try:
        ok(a, f"import cave, duckdb\ndb = duckdb.connect({str(data)!r})\n"
              "db.execute('CREATE TABLE t AS SELECT range AS i FROM range(5000)')\n"
              "cave.inject('db', db)")  # fmt: skip
        # As documented, after a plain `import cave` (before any magic imported the package).
        ok(a, "cave.checkpoint.copy_database(db, False)")
        assert "not copied" in ok(a, "%checkpoint copy db")
        assert "hold a copy" in ok(a, "%checkpoint copy db on")
        assert "Saved checkpoint 'withdb'" in ok(a, "%checkpoint save withdb")
        ok(a, "db.execute('DELETE FROM t WHERE i < 4000')")  # after the save
    finally:
        a.stop()  # releases the DuckDB file lock
    b = kernel("b", CAVE_RESUME="withdb")
    try:
        out = ok(b, "import cave\ndb = cave.retrieve('db')\n"
                    "print(db.execute('SELECT path FROM duckdb_databases() "
                    "WHERE database_name = current_database()').fetchone()[0])\n"
                    "print(db.execute('SELECT count(*) FROM t').fetchone()[0])")  # fmt: skip
        assert "Restored checkpoint 'withdb'" in out  # the resume's report, then ours
        assert out.split()[-2:] == [str(tmp_path / "data.restored-1.duckdb"), "5000"]
        assert "hold a copy" in ok(b, "%checkpoint copy db")
    finally:
        b.stop()
    check = duckdb.connect(str(data), read_only=True)
    assert check.execute("SELECT count(*) FROM t").fetchone() == (1000,)  # the original's state
