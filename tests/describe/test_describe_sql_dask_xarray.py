"""DuckDB, SQLAlchemy, Dask and xarray describers: catalog and metadata only, never computed."""

from __future__ import annotations

from pathlib import Path

import pytest
from describe_helpers import assert_bounded, assert_flat

from cave.runtime._manifest import describe

duckdb = pytest.importorskip("duckdb")
BIG = 10_000_000


def db(rows: int):  # type: ignore[no-untyped-def]
    con = duckdb.connect()
    con.execute(f"CREATE TABLE sales AS SELECT range AS id, 'north' AS region, 1.5 AS amount "
                f"FROM range({rows})")
    con.execute("CREATE VIEW north AS SELECT * FROM sales WHERE region = 'north'")
    return con


def test_duckdb_connection_lists_tables_views_columns_and_rows() -> None:
    small, big = db(10), db(BIG)
    text = describe("con", big)
    assert "duckdb.DuckDBPyConnection" in text and "in memory" in text
    assert "table sales (~10,000,000 rows, 3 cols)" in text
    assert "id BIGINT" in text and "region VARCHAR" in text
    assert "view north" in text
    assert_bounded(text)
    assert_flat(small, big)
    big.execute("SELECT 42")
    describe("con", big)
    assert big.fetchone() == (42,)  # the user's pending result survived the description


def test_duckdb_with_many_tables_is_bounded(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "many.duckdb"))
    for i in range(60):
        con.execute(f"CREATE TABLE t{i:02} (a INTEGER, b VARCHAR)")
    text = describe("con", con)
    assert "many.duckdb" in text and "60 tables and views" in text
    assert "more" in text
    assert_bounded(text)


def test_duckdb_relation_is_not_executed() -> None:
    con = db(10)
    rel = con.sql("SELECT region, sum(amount) AS total FROM sales GROUP BY region")
    text = describe("rel", rel)
    assert "total (DECIMAL(38,1))" in text and "GROUP BY" in text.upper() and "not executed" in text


def test_sqlalchemy_engine_masks_the_password() -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    import types

    driver = types.SimpleNamespace(paramstyle="format", __version__="1.0.0")  # never connects
    engine = sqlalchemy.create_engine("mysql+pymysql://ann:s3cret@db.example:3306/shop",
                                      module=driver)
    text = describe("engine", engine)
    assert "dialect: mysql (driver pymysql)" in text and "db.example:3306/shop" in text
    assert "s3cret" not in text and "***" in text


def test_dask_frame_and_array_are_never_computed() -> None:
    pytest.importorskip("dask.dataframe")
    import dask
    import dask.array as da
    import dask.dataframe as dd
    import pandas as pd

    meta = pd.DataFrame({"id": pd.Series([], dtype="int64"), "amount": pd.Series([], dtype="f8")})

    @dask.delayed
    def boom(i: int) -> pd.DataFrame:
        raise AssertionError("the manifest computed a partition")

    hostile = dd.from_delayed([boom(i) for i in range(100)], meta=meta)
    small = dd.from_pandas(pd.DataFrame({"id": range(10), "amount": [1.0] * 10}), npartitions=2)
    text = describe("ddf", hostile)
    assert "100 partitions" in text and "never computed" in text
    assert "id (int64)" in text and "amount (float64)" in text
    assert_bounded(text)
    assert_flat(small, hostile)
    stext = describe("s", hostile.amount)
    assert "series" in stext and "float64" in stext
    arr = da.ones((BIG, 10), chunks=(1_000_000, 10))
    atext = describe("arr", arr)
    assert "dask array" in atext and "(10000000, 10)" in atext and "10 chunks" in atext
    assert_flat(da.ones((10, 10), chunks=(5, 10)), arr)


def test_xarray_dataset_and_dataarray() -> None:
    xr = pytest.importorskip("xarray")
    import numpy as np

    ds = xr.Dataset(
        {"temp": (("time", "x"), np.zeros((4, 3)))},
        coords={"time": np.arange(4), "x": [10, 20, 30]},
        attrs={"source": "test"},
    )
    text = describe("ds", ds)
    assert "time: 4, x: 3" in text and "temp (time, x) float64" in text and "source=test" in text
    assert_bounded(text)
    atext = describe("da", ds["temp"])
    assert "name: 'temp'" in atext and "float64" in atext
