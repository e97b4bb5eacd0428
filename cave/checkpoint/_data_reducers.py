"""Reducers for the data stack: columnar data as Arrow IPC, connections as how to reconnect.

* Polars ``DataFrame`` and PyArrow ``Table``/``RecordBatch``: one Arrow IPC stream, handed to the
  pickler as an out-of-band ``PickleBuffer`` so it is hashed and written from Arrow's memory
  without another copy. On restore the table is read from the blob's memory (``open_stream`` over
  a ``py_buffer``: no copy), and Polars wraps it without a copy where its types allow.
* DuckDB connection: a database file is reopened by path (its content is not copied into the
  checkpoint); an in-memory database is exported (``EXPORT DATABASE``, Parquet) and imported
  into a new in-memory database on restore. Only the main database travels: other ``ATTACH``-ed
  databases, temporary objects, settings and open transactions do not.
* ``distributed.Client``: its scheduler address. On restore a new client connects to it (and
  becomes the default client); if the scheduler is gone, restore reports the name and why.

Dask collections and Polars ``LazyFrame`` need nothing here: they pickle as their task graph /
query plan, and pickling them computes nothing. Every reducer is registered by qualified name,
so none of these libraries is imported until an object of theirs is checkpointed.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

from .._errors import CheckpointError
from ._reducers import register

__all__ = ["DASK_CONNECT_TIMEOUT"]

DASK_CONNECT_TIMEOUT = 10.0
"""Seconds a restored ``distributed.Client`` waits for its scheduler before restore gives up."""


# --- Arrow IPC ---------------------------------------------------------------------------------


def _ipc(table: Any) -> pickle.PickleBuffer:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        if isinstance(table, pa.RecordBatch):
            writer.write_batch(table)
        else:
            writer.write_table(table)
    return pickle.PickleBuffer(sink.getvalue())


def _read_ipc(data: Any) -> Any:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _save_arrow(table: Any) -> pickle.PickleBuffer:
    return _ipc(table)


def _load_arrow_table(data: Any) -> Any:
    return _read_ipc(data)


def _load_arrow_batch(data: Any) -> Any:
    batches = _read_ipc(data).to_batches()
    if len(batches) == 1:
        return batches[0]
    import pyarrow as pa

    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def _save_polars(df: Any) -> pickle.PickleBuffer:
    import polars as pl

    # The newest compat level keeps Polars' own string views: no conversion copy.
    return _ipc(df.to_arrow(compat_level=pl.CompatLevel.newest()))


def _load_polars(data: Any) -> Any:
    import polars as pl

    return pl.from_arrow(_read_ipc(data), rechunk=False)


# --- DuckDB ------------------------------------------------------------------------------------


def _save_duckdb(con: Any) -> dict[str, Any]:
    cur = con.cursor()  # a second connection to the same database: the user's result stays
    try:
        path, readonly = cur.execute(
            "SELECT path, readonly FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()
        if path:
            return {"path": os.path.abspath(path), "read_only": bool(readonly)}
        with tempfile.TemporaryDirectory(prefix="cave-duckdb-") as tmp:
            quoted = tmp.replace("'", "''")
            cur.execute(f"EXPORT DATABASE '{quoted}' (FORMAT PARQUET)")
            files = {}
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    files[name] = f.read()
        return {"export": files}
    finally:
        cur.close()


def _load_duckdb(state: dict[str, Any]) -> Any:
    import duckdb

    if "path" in state:
        if not os.path.exists(state["path"]):
            raise CheckpointError(
                f"DuckDB database file {state['path']} is gone; the checkpoint holds its path, "
                "not its content. Restore the file there and restore again."
            )
        return duckdb.connect(state["path"], read_only=state["read_only"])
    con = duckdb.connect()
    with tempfile.TemporaryDirectory(prefix="cave-duckdb-") as tmp:
        for name, content in state["export"].items():
            if os.sep in name or name.startswith("."):
                raise CheckpointError(f"unexpected file name {name!r} in a DuckDB export")
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(content)
        quoted = tmp.replace("'", "''")
        con.execute(f"IMPORT DATABASE '{quoted}'")
    return con


# --- distributed.Client ------------------------------------------------------------------------


def _save_client(client: Any) -> dict[str, Any]:
    address = getattr(client.scheduler, "address", None)
    if not address:
        raise TypeError("this Dask client has no scheduler address (it is closed)")
    return {"address": address}


def _load_client(state: dict[str, Any]) -> Any:
    from distributed import Client

    try:
        return Client(state["address"], timeout=DASK_CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise CheckpointError(
            f"the Dask scheduler at {state['address']} did not answer within "
            f"{DASK_CONNECT_TIMEOUT:g} s ({type(exc).__name__}: {exc}). Start it again and "
            "restore, or create a new Client and inject it."
        ) from exc


_BUILTIN = {
    "polars.dataframe.frame:DataFrame": (_save_polars, _load_polars),
    "pyarrow.lib:Table": (_save_arrow, _load_arrow_table),
    "pyarrow.lib:RecordBatch": (_save_arrow, _load_arrow_batch),
    "duckdb.duckdb:DuckDBPyConnection": (_save_duckdb, _load_duckdb),
    "_duckdb:DuckDBPyConnection": (_save_duckdb, _load_duckdb),
    "duckdb:DuckDBPyConnection": (_save_duckdb, _load_duckdb),
    "distributed.client:Client": (_save_client, _load_client),
}
for _name, (_save, _load) in _BUILTIN.items():
    register(_name, _save, _load)
del _name, _save, _load
