"""Teach the manifest about your objects: ``register(TYPE or "module.QualName", fn)``.

``fn(obj, budget)`` returns a few lines (a string or a list of strings) of at most ``budget``
characters, read from metadata only: its cost must not grow with the data. A class may instead
define ``__cave_describe__(self, budget)``. Registering by name imports nothing.

Built in (each bounded, nothing computed, collected or scanned): Polars ``DataFrame`` and
``LazyFrame``; PyArrow ``Table``, ``RecordBatch`` and ``dataset.Dataset``; DuckDB connections and
relations; Dask ``DataFrame``/``Series``/``Array`` and ``distributed.Client``; xarray ``Dataset``
and ``DataArray``; SQLAlchemy ``Engine``. See ``cave/describe/_columnar.py``, ``_sql.py``,
``_dask.py`` and ``_xarray.py``.
"""

from __future__ import annotations

from ._registry import Describer, lookup, register, unregister

__all__ = ["Describer", "lookup", "register", "unregister"]

_BUILTIN = {
    "polars.dataframe.frame.DataFrame": "cave.describe._columnar:polars_frame",
    "polars.lazyframe.frame.LazyFrame": "cave.describe._columnar:polars_lazy",
    "pyarrow.lib.Table": "cave.describe._columnar:arrow_table",
    "pyarrow.lib.RecordBatch": "cave.describe._columnar:arrow_table",
    "pyarrow._dataset.Dataset": "cave.describe._columnar:arrow_dataset",
    "duckdb.duckdb.DuckDBPyConnection": "cave.describe._sql:duckdb_connection",
    "_duckdb.DuckDBPyConnection": "cave.describe._sql:duckdb_connection",
    "duckdb.DuckDBPyConnection": "cave.describe._sql:duckdb_connection",
    "duckdb.duckdb.DuckDBPyRelation": "cave.describe._sql:duckdb_relation",
    "_duckdb.DuckDBPyRelation": "cave.describe._sql:duckdb_relation",
    "duckdb.DuckDBPyRelation": "cave.describe._sql:duckdb_relation",
    "duckdb._relation.DuckDBPyRelation": "cave.describe._sql:duckdb_relation",
    "sqlalchemy.engine.base.Engine": "cave.describe._sql:sqlalchemy_engine",
    "dask.dataframe.dask_expr._collection.FrameBase": "cave.describe._dask:dask_frame",
    "dask_expr._collection.FrameBase": "cave.describe._dask:dask_frame",
    "dask.array.core.Array": "cave.describe._dask:dask_array",
    "distributed.client.Client": "cave.describe._dask:dask_client",
    "xarray.core.dataset.Dataset": "cave.describe._xarray:xarray_dataset",
    "xarray.core.dataarray.DataArray": "cave.describe._xarray:xarray_dataarray",
}
for _name, _fn in _BUILTIN.items():
    register(_name, _fn)
del _name, _fn
