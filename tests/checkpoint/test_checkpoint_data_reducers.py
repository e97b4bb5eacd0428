"""The data stack's reducers, round-tripped through a real checkpoint store into a fresh kernel.

Polars and Arrow travel as Arrow IPC (out-of-band, not pickled); a file-backed DuckDB connection
by path (the file is not copied); an in-memory DuckDB database by export; Dask collections and a
Polars LazyFrame as their graph/plan. The ``distributed.Client`` reducer runs in
tests/data/test_dask_scenario.py against a real cluster; its "scheduler gone" report is here.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from cave.testing import KernelHarness

pytestmark = pytest.mark.slow
pl = pytest.importorskip("polars")
pytest.importorskip("duckdb")
pytest.importorskip("dask.dataframe")

SETUP = """
import cave, polars as pl, pyarrow as pa, duckdb, dask.dataframe as dd, pandas as pd
frame = pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", None], "x": [0.5, 1.5, 2.5]})
table = pa.table({"k": ["u", "v"], "v": pa.array([1, 2], pa.int16())})
batch = table.to_batches()[0]
filedb = duckdb.connect(DBPATH)
filedb.execute("CREATE TABLE t AS SELECT range AS i, random() AS r FROM range(2000000)")
memdb = duckdb.connect()
memdb.execute("CREATE TABLE m (a INTEGER, b VARCHAR)")
memdb.execute("INSERT INTO m VALUES (1, 'one'), (2, 'two')")
memdb.execute("CREATE VIEW mv AS SELECT a * 10 AS a10 FROM m")
ddf = dd.from_pandas(pd.DataFrame({"g": list("abab"), "v": [1, 2, 3, 4]}), npartitions=2)
lazy = frame.lazy().filter(pl.col("id") > 1).select("id", "x")
for name in ("frame", "table", "batch", "filedb", "memdb", "ddf", "lazy"):
    cave.inject(name, globals()[name])
"""

CHECK = """
import cave, polars as pl, pyarrow as pa, duckdb
r = {n: cave.retrieve(n) for n in ("frame", "table", "batch", "filedb", "memdb", "ddf", "lazy")}
expected = pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", None], "x": [0.5, 1.5, 2.5]})
assert r["frame"].equals(expected)
assert r["table"].equals(pa.table({"k": ["u", "v"], "v": pa.array([1, 2], pa.int16())}))
assert isinstance(r["batch"], pa.RecordBatch) and r["batch"].num_rows == 2
assert r["filedb"].execute("SELECT sum(i) FROM t").fetchone() == (1999999000000,)
assert r["memdb"].execute("SELECT * FROM m ORDER BY a").fetchall() == [(1, "one"), (2, "two")]
assert r["memdb"].execute("SELECT sum(a10) FROM mv").fetchone() == (30,)
assert r["ddf"].npartitions == 2 and int(r["ddf"].v.sum().compute(scheduler="sync")) == 10
assert r["lazy"].collect()["id"].to_list() == [2, 3]
print("all restored")
"""


def kernel(root: Path, name: str, **env: str) -> KernelHarness:
    ws = root / name
    ws.mkdir(parents=True, exist_ok=True)
    base = {"CAVE_CONFIG_DIR": str(root / "config"), "CAVE_SESSION_DIR": str(ws / "session"),
            "CAVE_CHECKPOINTS": str(root / "store"), "CAVE_AUTOCHECKPOINT": "0"}
    return KernelHarness(env={**base, **env}, cwd=ws).start()


def ok(k: KernelHarness, code: str) -> Any:
    cell = k.execute(code, timeout=120)
    assert cell.status == "ok", cell.all_text
    return cell


def test_data_objects_round_trip_into_a_fresh_kernel(tmp_path: Path) -> None:
    dbpath = tmp_path / "data.duckdb"
    a = kernel(tmp_path, "a")
    try:
        ok(a, f"DBPATH = {str(dbpath)!r}\n" + SETUP)
        saved = ok(a, "%checkpoint save data").stdout
        assert "Saved checkpoint 'data'" in saved, saved
        assert "not saved" not in saved.lower(), saved
    finally:
        a.stop()  # releases the DuckDB file lock
    size = dbpath.stat().st_size
    blobs = sum(p.stat().st_size for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert blobs < size, "the DuckDB file was copied into the checkpoint"
    b = kernel(tmp_path, "b", CAVE_RESUME="data")
    try:
        out = ok(b, CHECK).stdout
        assert "all restored" in out
    finally:
        b.stop()


def test_polars_and_arrow_are_arrow_ipc_out_of_band_not_pickle() -> None:
    from cave.checkpoint import _pickling

    frame = pl.DataFrame({"x": list(range(100_000))})
    pickled = _pickling.dump(frame)
    assert len(pickled.inband) < 1000  # the data left the pickle stream
    assert bytes(pickled.buffers[0][:4]) == b"\xff\xff\xff\xff"  # IPC continuation marker
    stream = b"".join(bytes(b) for b in pickled.buffers)
    assert pl.read_ipc_stream(stream).equals(frame)  # the pieces, end to end, are an IPC stream
    import numpy as np

    column = frame["x"].to_arrow().buffers()[1]  # the frame's own values buffer
    addresses = {np.frombuffer(b, np.uint8).ctypes.data for b in pickled.buffers if b.nbytes}
    assert column.address in addresses  # pickled from the frame's memory: no copy
    payload = memoryview(b"".join(bytes(p) for p in pickled.parts()))
    back = _pickling.load(payload)
    assert back.equals(frame)
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(pickled.inband)  # needs its out-of-band buffer: not a plain pickle


def test_a_gone_scheduler_is_reported_with_its_address(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    from cave._errors import CheckpointError
    from cave.checkpoint import _data_reducers

    monkeypatch.setattr(_data_reducers, "DASK_CONNECT_TIMEOUT", 1.0)
    with pytest.raises(CheckpointError, match=r"tcp://127\.0\.0\.1:9 did not answer"):
        _data_reducers._load_client({"address": "tcp://127.0.0.1:9"})
