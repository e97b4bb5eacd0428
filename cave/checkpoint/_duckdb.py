"""DuckDB connections in checkpoints: by path, or with their data when asked.

* A file-backed connection is saved as its path and reopened by path on restore: the database
  file stays where it is and is not copied (it may be large, and it is the user's file).
* `copy_database(con)` asks for the data instead: each checkpoint then holds the database as
  ``EXPORT DATABASE`` writes it (schema SQL and one Parquet file per table), taken in one
  statement, so in one transaction: a consistent snapshot even while other connections of the
  process write (DuckDB's own lock keeps other processes from writing a file this process opened
  read-write). Restoring imports it into a **new** file next to the original,
  ``<stem>.restored-<k><suffix>`` (in ``<session dir>/restored/`` when that directory is gone
  or not writable), never over the original or over any existing file; the restored connection
  keeps the setting. An unchanged database exports the same bytes, so a later checkpoint
  stores nothing new for it, but every save pays for the export (it reads the whole database).
* An in-memory database is always exported the same way and imported into a new in-memory one.

Only the main database travels: other ``ATTACH``-ed databases, temporary objects, settings and
open transactions do not.
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
import tempfile
import weakref
from pathlib import Path
from typing import Any

from .._errors import CheckpointError
from ._reducers import register

__all__ = ["copy_database"]

_PLACEHOLDER = "@CAVE_EXPORT_DIR@"
"""Stands for the export directory inside ``load.sql``, so that the same database exports the
same bytes at every save (the temporary directory's name would differ)."""
_TYPES = ("duckdb.duckdb:DuckDBPyConnection", "_duckdb:DuckDBPyConnection",
          "duckdb:DuckDBPyConnection")  # fmt: skip
_copy: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_RESTORED = re.compile(r"\.restored-[0-9]+$")


def _is_connection(obj: Any) -> bool:
    t = type(obj)
    return f"{t.__module__}:{t.__qualname__}" in _TYPES


def copy_database(con: Any, copy: bool = True) -> None:
    """Copy the data of DuckDB connection ``con`` into every checkpoint from now on.

    By default a file-backed connection is checkpointed as its path (the file is not copied).
    With ``copy=True`` each checkpoint holds a consistent export of the database, and restoring
    it opens a new file beside the original instead of the original (see the module docstring).
    ``copy=False`` goes back to the default. In-memory databases are always copied.
    """
    if not _is_connection(con):
        raise TypeError(
            f"copy_database() takes a DuckDB connection (duckdb.connect(...)), not "
            f"{type(con).__module__}.{type(con).__qualname__}"
        )
    _copy[con] = bool(copy)


def copies(con: Any) -> bool:
    """Whether checkpoints copy the data of ``con`` (set by `copy_database`)."""
    return _copy.get(con, False)


def _where(con: Any) -> str:
    """The path of the connection's main database ('' in memory)."""
    cur = con.cursor()  # a second connection to the same database: the user's result stays
    try:
        row = cur.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()
    finally:
        cur.close()
    return str(row[0] or "") if row else ""


def copy_setting(con: Any) -> str:
    """How checkpoints save DuckDB connection ``con``, in a sentence (for ``%checkpoint copy``)."""
    if not _is_connection(con):
        raise TypeError(f"not a DuckDB connection: {type(con).__module__}.{type(con).__qualname__}")
    path = _where(con)
    if not path:
        return "an in-memory database: checkpoints always hold its data (EXPORT DATABASE)."
    if copies(con):
        return (
            f"checkpoints hold a copy of the data of {path} (EXPORT DATABASE); a restore opens "
            "it as a new file beside the original, never the original itself."
        )
    return f"checkpoints save it as the path {path}; the database file is not copied."


def _export(cur: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cave-duckdb-") as tmp:
        quoted = tmp.replace("'", "''")
        cur.execute(f"EXPORT DATABASE '{quoted}' (FORMAT PARQUET)")
        files: dict[str, Any] = {}
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                data = f.read()
            if name.endswith(".sql"):
                data = data.replace(quoted.encode(), _PLACEHOLDER.encode())
            # Out of band: hashed and written from this buffer, not copied into the pickle.
            files[name] = pickle.PickleBuffer(data)
    return files


def _save(con: Any) -> dict[str, Any]:
    cur = con.cursor()  # a second connection to the same database: the user's result stays
    try:
        path, readonly = cur.execute(
            "SELECT path, readonly FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()
        if not path:
            return {"export": _export(cur)}
        state = {"path": os.path.abspath(path), "read_only": bool(readonly)}
        if copies(con):
            state["export"] = _export(cur)
        return state
    finally:
        cur.close()


def _import(con: Any, files: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="cave-duckdb-") as tmp:
        quoted = tmp.replace("'", "''")
        for name, content in files.items():
            if os.sep in name or name.startswith("."):
                raise CheckpointError(f"unexpected file name {name!r} in a DuckDB export")
            data = bytes(content)
            if name.endswith(".sql"):
                data = data.replace(_PLACEHOLDER.encode(), quoted.encode())
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        con.execute(f"IMPORT DATABASE '{quoted}'")


def restore_path(original: str) -> Path:
    """Where a copied database is restored: the first ``<stem>.restored-<k><suffix>`` beside
    ``original`` (or in ``<session dir>/restored/``) with no file and no WAL of that name (a
    stray WAL would be replayed into the new database). The caller creates it without replacing
    anything (`_place`). A restored copy saved and restored again gets the next number, not a
    second suffix."""
    from .._env import session_dir

    orig = Path(original)
    folder = orig.parent
    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        folder = session_dir() / "restored"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = _RESTORED.sub("", orig.stem)
    for k in itertools.count(1):
        candidate = folder / f"{stem}.restored-{k}{orig.suffix}"
        if not candidate.exists() and not Path(f"{candidate}.wal").exists():
            return candidate
    raise AssertionError("unreachable")


def _place(built: Path, original: str) -> Path:
    """Move the finished file ``built`` to a free restore path; never replaces another file."""
    while True:
        target = restore_path(original)
        try:  # reserve the name: fails if it was taken since, then try the next one
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            continue
        os.replace(built, target)  # replaces only the empty file reserved just now
        return target


def _load_copy(state: dict[str, Any]) -> Any:
    import duckdb

    folder = restore_path(state["path"]).parent
    fd, name = tempfile.mkstemp(prefix=".cave-restore-", suffix=".duckdb", dir=folder)
    os.close(fd)
    built = Path(name)
    built.unlink()  # DuckDB creates the file itself (it refuses an empty one)
    try:
        con = duckdb.connect(str(built))
        try:
            _import(con, state["export"])
            con.execute("CHECKPOINT")
        finally:
            con.close()
        if Path(f"{built}.wal").exists():
            raise CheckpointError(f"DuckDB left a WAL beside {built} after CHECKPOINT and close")
        target = _place(built, state["path"])
    finally:  # a failed import leaves nothing behind (after success, built was moved)
        built.unlink(missing_ok=True)
        Path(f"{built}.wal").unlink(missing_ok=True)
    restored = duckdb.connect(str(target), read_only=state["read_only"])
    _copy[restored] = True
    return restored


def _load(state: dict[str, Any]) -> Any:
    import duckdb

    if "path" in state and "export" in state:
        return _load_copy(state)
    if "path" in state:
        if not os.path.exists(state["path"]):
            raise CheckpointError(
                f"DuckDB database file {state['path']} is gone; the checkpoint holds its path, "
                "not its content. Restore the file there and restore again (or, before saving, "
                "cave.checkpoint.copy_database(con) to keep the data in checkpoints)."
            )
        return duckdb.connect(state["path"], read_only=state["read_only"])
    con = duckdb.connect()
    _import(con, state["export"])
    return con


for _name in _TYPES:
    register(_name, _save, _load)
del _name
