"""Polars and Arrow describers: schema present, size bounded, cost flat, nothing collected."""

from __future__ import annotations

from pathlib import Path

import pytest
from describe_helpers import assert_bounded, assert_flat

from cave.runtime._manifest import describe

pl = pytest.importorskip("polars")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ds = pytest.importorskip("pyarrow.dataset")

BIG = 10_000_000


def frame(n: int):  # type: ignore[no-untyped-def]
    return pl.DataFrame({"id": pl.int_range(n, eager=True), "price": pl.repeat(1.5, n, eager=True),
                         "region": pl.repeat("north", n, eager=True)})


@pytest.fixture(scope="module")
def frames():  # type: ignore[no-untyped-def]
    return frame(10), frame(BIG)


def test_polars_frame(frames) -> None:  # type: ignore[no-untyped-def]
    small, big = frames
    text = describe("sales", big)
    assert text.startswith("sales: polars.DataFrame")
    assert "10,000,000 rows x 3 columns" in text
    assert "id (Int64)" in text and "price (Float64)" in text and "region (String)" in text
    assert "north" in text  # sample rows
    assert_bounded(text)
    assert_flat(small, big)


def test_polars_frame_with_many_columns_is_bounded() -> None:
    wide = pl.DataFrame({f"column_{i}": [i] for i in range(3000)})
    text = describe("wide", wide)
    assert_bounded(text)
    assert "columns (3,000)" in text


def test_lazyframe_over_parquet_is_never_executed(tmp_path: Path, frames) -> None:  # type: ignore[no-untyped-def]
    _, big = frames
    path = tmp_path / "big.parquet"
    big.write_parquet(path, row_group_size=1_000_000)

    def boom(s):  # type: ignore[no-untyped-def]
        raise AssertionError("the plan was executed")

    lazy = (pl.scan_parquet(path)
            .with_columns(pl.col("id").map_batches(boom, return_dtype=pl.Int64).alias("checked"))
            .filter(pl.col("price") > 1))
    text = describe("lazy", lazy)
    assert "polars.LazyFrame" in text and "never collected" in text
    assert "checked (Int64)" in text and "region (String)" in text
    assert "plan:" in text and "FILTER" in text.upper()
    assert_bounded(text)
    with pytest.raises(Exception, match="executed"):
        lazy.collect()  # proves the plan would have failed had the manifest run it
    small_lazy = frame(10).lazy().with_columns(pl.col("id").alias("checked"))
    assert_flat(small_lazy, lazy)


def test_arrow_table_and_record_batch(frames) -> None:  # type: ignore[no-untyped-def]
    small, big = frames
    table, small_table = big.to_arrow(), small.to_arrow()
    text = describe("t", table)
    assert "pyarrow.Table" in text and "rows: 10,000,000; columns: 3" in text
    assert "id (int64)" in text and "price (double)" in text
    assert_bounded(text)
    assert_flat(small_table, table)
    batch = table.to_batches()[0]
    btext = describe("b", batch)
    assert "pyarrow.RecordBatch" in btext and "price (double)" in btext
    assert_flat(small_table.to_batches()[0], batch)


def test_arrow_dataset_lists_files_and_partitioning(tmp_path: Path) -> None:
    table = pa.table({"region": ["n", "s"] * 5, "amount": list(range(10))})
    pq.write_to_dataset(table, tmp_path / "sales", partition_cols=["region"])
    dataset = ds.dataset(tmp_path / "sales", format="parquet", partitioning="hive")
    text = describe("d", dataset)
    assert "amount (int64)" in text and "region" in text
    assert "files: 2 (parquet)" in text
    assert "partitioning: HivePartitioning" in text
    assert "not counted" in text
    assert_bounded(text)
