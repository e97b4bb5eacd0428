"""The data stack: manifest cost with big Polars/DuckDB/Dask objects, and a 1 GiB Polars checkpoint.

1. **Manifest of 100 objects**: a 1 GiB Polars frame (16,777,216 rows x 8 Float64), a DuckDB
   database with 50 tables (100,000 rows each), a Dask frame of 100 partitions, and 97 everyday
   objects (benchmarks/bench_manifest.py's). Against the same with a 10-row Polars frame, 50
   tables of 10 rows and a Dask frame of 100 10-row partitions. Target: <= 10 ms, ratio ~1.
2. **Checkpoint of the 1 GiB Polars frame** into a fresh local SessionStore (Arrow IPC, hashed,
   written, fsynced by the store) against ``DataFrame.write_ipc`` of the same frame to a new file
   in the same run, with the same durability: the file fsynced, then its directory (the store
   fsyncs its blob file, the blob's directory and its SQLite commit). The two alternate which goes
   first in each repeat. Target: write_ipc time / checkpoint time >= 0.8. Also in the same run:
   the checkpoint with blob format 1 (SHA-256 blocks, what saves wrote before BLAKE3), and the
   store's own speed on the same bytes as 8 NumPy arrays.

Run: .venv/bin/python benchmarks/bench_data_stack.py [--repeat K] [--dir DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _table import write_table  # noqa: E402
from bench_manifest import others  # noqa: E402

from cave.runtime._namespace import AgentRuntime  # noqa: E402

GIB_ROWS = 1 << 24  # x 8 Float64 columns = 1 GiB


def data_objects(rows: int, table_rows: int, part_rows: int) -> list[tuple[str, Any, str]]:
    import dask.dataframe as dd
    import duckdb
    import numpy as np
    import pandas as pd
    import polars as pl

    frame = pl.DataFrame({f"c{i}": np.full(rows, float(i)) for i in range(8)})
    db = duckdb.connect()
    for i in range(50):
        db.execute(f"CREATE TABLE t{i:02} AS SELECT range AS id, random() AS x, 'label' AS s "
                   f"FROM range({table_rows})")
    part = pd.DataFrame({"id": np.arange(part_rows), "x": np.ones(part_rows)})
    ddf = dd.from_pandas(pd.concat([part] * 100, ignore_index=True), npartitions=100)
    return [("frame", frame, "polars"), ("db", db, "duckdb"), ("ddf", ddf, "dask")]


def manifest_ms(items: list[tuple[str, Any, str | None]], repeat: int) -> list[float]:
    rt = AgentRuntime()
    for name, obj, desc in items:
        rt.inject(name, obj, desc)
    rt.manifest()  # warm: describer modules load once
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        text = rt.manifest()
        times.append((time.perf_counter() - t) * 1000)
    assert "polars.DataFrame" in text and "100 partitions" in text and "50 tables" in text, text
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--manifests", type=int, default=50)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    import polars as pl

    from cave.checkpoint import SessionStore, _blobio

    rest = others()[:97]
    rows: list[list[Any]] = []
    small = manifest_ms(data_objects(10, 10, 10) + rest, args.manifests)
    gc.collect()
    big_objs = data_objects(GIB_ROWS, 100_000, 10_000)
    big = manifest_ms(big_objs + rest, args.manifests)
    ms, mb = statistics.median(small), statistics.median(big)
    rows.append(["manifest, 100 objects, small data (ms)", f"{ms:.2f}",
                 f"min {min(small):.2f}, max {max(small):.2f}"])
    rows.append(["manifest, 100 objects, 1 GiB Polars + 50 tables + 100 partitions (ms)",
                 f"{mb:.2f}", f"min {min(big):.2f}, max {max(big):.2f}"])
    rows.append(["manifest ratio big / small", f"{mb / ms:.2f}",
                 f"min/min {min(big) / min(small):.2f}; target <= 10 ms, ~1"])

    frame = big_objs[0][1]
    assert frame.estimated_size() == 1 << 30
    del big_objs
    gc.collect()
    work = Path(tempfile.mkdtemp(prefix="cave-bench-data-", dir=args.dir))
    secret = os.urandom(32)
    ipc_times: list[float] = []
    cave_times: list[float] = []
    v1_times: list[float] = []
    numpy_times: list[float] = []
    assert _blobio.write_version() == 2, "blake3 is not installed: saves would write format 1"

    def write_ipc() -> None:
        path = work / "ipc" / "frame.arrow"
        path.parent.mkdir()
        t = time.perf_counter()
        frame.write_ipc(path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        ipc_times.append(time.perf_counter() - t)
        shutil.rmtree(path.parent)

    def checkpoint(into: list[float], namespace: dict[str, Any], check: bool = False) -> None:
        root = work / "store"
        store = SessionStore(root, secret=secret)
        t = time.perf_counter()
        store.save("full", namespace, {"messages": []})
        into.append(time.perf_counter() - t)
        store.verifier.wait()  # its background re-hash (if any) must not overlap the next run
        if check:
            back = store.load("full").namespace["frame"]
            assert isinstance(back, pl.DataFrame) and back.equals(frame)
            del back
        shutil.rmtree(root)
        gc.collect()

    try:
        for i in range(args.repeat):
            if i % 2:
                checkpoint(cave_times, {"frame": frame})
                write_ipc()
            else:
                write_ipc()
                checkpoint(cave_times, {"frame": frame}, check=i == 0)
            _blobio._write_version = 1  # the same save with SHA-256 blocks (blob format 1)
            try:
                checkpoint(v1_times, {"frame": frame})
            finally:
                _blobio._write_version = None
            # The store's own speed on the same bytes: the 8 columns as NumPy views (no copy).
            checkpoint(numpy_times, {c: frame[c].to_numpy() for c in frame.columns})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ipc, cave = statistics.median(ipc_times), statistics.median(cave_times)
    rows.append(["DataFrame.write_ipc 1 GiB + fsync file and directory (s)", f"{ipc:.3f}",
                 " ".join(f"{x:.3f}" for x in ipc_times)])
    rows.append(["cave checkpoint of the same frame, BLAKE3 blobs (s)", f"{cave:.3f}",
                 " ".join(f"{x:.3f}" for x in cave_times)])
    rows.append(["ratio write_ipc / checkpoint", f"{ipc / cave:.2f}",
                 "target >= 0.8; per repeat: "
                 + " ".join(f"{a / b:.2f}" for a, b in zip(ipc_times, cave_times, strict=True))])
    v1 = statistics.median(v1_times)
    rows.append(["cave checkpoint of the same frame, SHA-256 blobs (format 1) (s)", f"{v1:.3f}",
                 " ".join(f"{x:.3f}" for x in v1_times)])
    rows.append(["ratio write_ipc / format-1 checkpoint", f"{ipc / v1:.2f}",
                 "the hash before this change"])
    npy = statistics.median(numpy_times)
    rows.append(["cave checkpoint of the same bytes as 8 NumPy arrays (s)", f"{npy:.3f}",
                 " ".join(f"{x:.3f}" for x in numpy_times)])
    rows.append(["Polars checkpoint / NumPy checkpoint", f"{cave / npy:.2f}",
                 "the Arrow IPC path's overhead over the store's own speed"])
    write_table("data_stack", ["measure", "median", "runs / note"], rows,
                notes=f"Load average at start {os.getloadavg()[0]:.1f} (a shared 2-core machine).")


if __name__ == "__main__":
    main()
