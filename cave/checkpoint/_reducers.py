"""Reducers: how objects that plain pickling cannot carry are saved and reconnected.

A reducer turns a live object into a small picklable description (``save``) and back into a live
object at restore time (``load``). Built in: ``sqlite3.Connection`` (by database path; an
in-memory database by its content) and open files (by path, mode and position). cloudpickle's own
file reducer reads the whole file into the pickle; ours never reads file content.

The description names its reducer by the type's qualified name, so a checkpoint refers to code,
never carries it: restoring needs the same reducer registered in the restoring process.
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from .._errors import CheckpointError

Saver = Callable[[Any], Any]
Loader = Callable[[Any], Any]

_lock = threading.Lock()
_by_type: dict[type, tuple[str, Saver]] = {}
_by_name: dict[str, tuple[str, Saver]] = {}
"""Reducers registered by ``"module:QualName"``: no import until an object of the type is saved."""
_by_key: dict[str, Loader] = {}
_resolved: dict[type, tuple[str, Saver] | None] = {}


def _key(type_: type) -> str:
    return f"{type_.__module__}:{type_.__qualname__}"


def register(type_: type | str, save: Saver, load: Loader) -> None:
    """Checkpoint instances of ``type_`` (and its subclasses) as ``load(save(obj))``.

    ``save(obj)`` must return something picklable and is called while the checkpoint is taken;
    ``load(value)`` rebuilds the object at restore time. Register the same pair in the process
    that restores, before restoring. A later registration for the same type replaces the earlier.
    ``type_`` may be the class's ``"module:QualName"`` (``type.__module__``, a colon, then
    ``__qualname__``), which imports nothing until such an object is saved.
    """
    if isinstance(type_, str):
        if ":" not in type_:
            raise TypeError(
                f"register() needs a type or 'module:QualName' such as "
                f"'polars.dataframe.frame:DataFrame', got {type_!r}"
            )
        with _lock:
            _by_name[type_] = (type_, save)
            _by_key[type_] = load
            _resolved.clear()
        return
    if not isinstance(type_, type):
        raise TypeError(f"register() needs a type, got {type_!r}")
    key = _key(type_)
    with _lock:
        _by_type[type_] = (key, save)
        _by_key[key] = load
        _resolved.clear()


def unregister(type_: type | str) -> None:
    """Forget the reducer for ``type_`` (built-in ones included)."""
    if isinstance(type_, str):
        with _lock:
            _by_name.pop(type_, None)
            _by_key.pop(type_, None)
            _resolved.clear()
        return
    with _lock:
        _by_type.pop(type_, None)
        _by_key.pop(_key(type_), None)
        _resolved.clear()


def _lookup(type_: type) -> tuple[str, Saver] | None:
    try:
        return _resolved[type_]
    except KeyError:
        pass
    found = None
    for base in type_.__mro__:
        if base in _by_type:
            found = _by_type[base]
            break
        if _by_name and _key(base) in _by_name:
            found = _by_name[_key(base)]
            break
    _resolved[type_] = found
    return found


def reduce_registered(obj: Any) -> Any:
    """A ``__reduce__`` tuple for ``obj`` if a reducer is registered for its type, else None."""
    entry = _lookup(type(obj))
    if entry is None:
        return None
    key, save = entry
    return (_rebuild, (key, save(obj)))


def _rebuild(key: str, value: Any) -> Any:
    load = _by_key.get(key)
    if load is None:
        raise CheckpointError(
            f"This checkpoint holds a {key} saved by a registered reducer, and none is registered "
            "now. Call cave.checkpoint.register(type, save, load) before restoring."
        )
    return load(value)


# --- open files --------------------------------------------------------------------------------


def _reopen_mode(mode: str) -> str:
    """The mode that reopens a file without truncating or refusing it: w/x become r+."""
    binary = "b" if "b" in mode else ""
    plus = "+" in mode
    if "a" in mode:
        return "a" + ("+" if plus else "") + binary
    if "w" in mode or "x" in mode:
        return "r+" + binary
    return "r" + ("+" if plus else "") + binary


def _save_file(f: Any) -> dict[str, Any]:
    name = getattr(f, "name", None)
    if not isinstance(name, str | bytes):
        raise TypeError(f"{type(f).__name__} is not backed by a named file (name={name!r})")
    path = os.path.abspath(os.fsdecode(name))
    mode = getattr(f, "mode", "r")
    state: dict[str, Any] = {"path": path, "mode": _reopen_mode(mode), "closed": f.closed}
    state["raw"] = isinstance(f, io.FileIO)
    if isinstance(f, io.TextIOWrapper):
        state["encoding"] = f.encoding
        state["errors"] = f.errors
    if not f.closed:
        if f.writable():
            f.flush()  # so that the saved position matches what is in the file
        state["position"] = f.tell()
    return state


def _load_file(state: dict[str, Any]) -> Any:
    mode = state["mode"]
    kwargs: dict[str, Any] = {}
    if state.get("raw"):
        kwargs["buffering"] = 0
    if "encoding" in state:
        kwargs["encoding"] = state["encoding"]
        kwargs["errors"] = state["errors"]
    f = open(state["path"], mode, **kwargs)  # noqa: SIM115 - the restored object is the open file
    if state["closed"]:
        f.close()
    elif "a" not in mode:
        f.seek(state["position"])
    return f


# --- sqlite3 -----------------------------------------------------------------------------------


def _save_sqlite(conn: sqlite3.Connection) -> dict[str, Any]:
    rows = conn.execute("PRAGMA database_list").fetchall()
    path = next((row[2] for row in rows if row[1] == "main"), "")
    state: dict[str, Any] = {"isolation_level": conn.isolation_level}
    if path:
        state["path"] = path
    elif hasattr(conn, "serialize"):
        state["content"] = conn.serialize()
    else:
        raise TypeError("an in-memory sqlite3 database can be checkpointed on Python >= 3.11 only")
    return state


def _load_sqlite(state: dict[str, Any]) -> sqlite3.Connection:
    # check_same_thread=False: agent code may run in a different worker thread each turn.
    if "path" in state:
        conn = sqlite3.connect(
            state["path"], isolation_level=state["isolation_level"], check_same_thread=False
        )
    else:
        conn = sqlite3.connect(
            ":memory:", isolation_level=state["isolation_level"], check_same_thread=False
        )
        conn.deserialize(state["content"])
    return conn


for _t in (io.TextIOWrapper, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.FileIO):
    _by_type[_t] = (_key(_t), _save_file)
    _by_key[_key(_t)] = _load_file
_by_type[sqlite3.Connection] = (_key(sqlite3.Connection), _save_sqlite)
_by_key[_key(sqlite3.Connection)] = _load_sqlite
del _t
