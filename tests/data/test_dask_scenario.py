"""Dask as the scale-out engine, end to end, through real Cave kernels and a real LocalCluster.

The user injects a Dask DataFrame over a partitioned Parquet dataset of 10 million rows and the
client; the agent (loopback Anthropic server, scripted) computes an aggregate through the
cluster; building the manifest runs no task on the scheduler; the session is checkpointed and
resumed in a fresh kernel, which reconnects to the same cluster. The Dask policy
(cave/_data_grants.py) lets the agent open its own connection to that scheduler without a
question, and is audited.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cave.testing import KernelHarness, ScriptedServer, reply

pytestmark = pytest.mark.slow
distributed = pytest.importorskip("distributed")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROWS = 10_000_000
FILES = 20
REGIONS = ["east", "north", "south", "west"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10M rows in 20 Parquet files, ``region`` and ``amount``, written with pyarrow (~2 s)."""
    import numpy as np

    root = tmp_path_factory.mktemp("sales")
    per = ROWS // FILES
    codes = np.arange(per, dtype=np.int32) % len(REGIONS)
    region = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(REGIONS))
    for i in range(FILES):
        amount = pa.array(np.full(per, float(i), dtype=np.float64))
        table = pa.table({"region": region, "amount": amount})
        pq.write_table(table, root / f"part-{i:02}.parquet", compression="none")
    return root


def expected_totals() -> dict[str, float]:
    per = ROWS // FILES
    return {r: float(sum(range(FILES)) * (per // len(REGIONS))) for r in REGIONS}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        worker_dashboard_address=None,
    ) as c:
        yield c


Model = ScriptedServer  # one server for every kernel of the module


def kernel(root: Path, name: str, model: Model, **env: str) -> KernelHarness:
    ws = root / name / "ws"
    ws.mkdir(parents=True, exist_ok=True)
    base = {**model.env(), "CAVE_CONFIG_DIR": str(root / "config"),
            "CAVE_SESSION_DIR": str(root / name / "session"),
            "CAVE_CHECKPOINTS": str(root / "store"), "CAVE_AUTOCHECKPOINT": "0"}
    return KernelHarness(env={**base, **env}, cwd=ws).start()


def ok(k: KernelHarness, code: str, timeout: float = 120) -> Any:
    cell = k.execute(code, timeout=timeout)
    assert cell.status == "ok", cell.all_text
    return cell


def transitions(cluster: Any) -> int:
    return int(cluster.scheduler.transition_counter)


def test_agent_computes_through_the_cluster_and_resumes_elsewhere(
    tmp_path: Path, dataset: Path, cluster: Any
) -> None:
    address = cluster.scheduler_address
    model = Model()
    try:
        a = kernel(tmp_path, "a", model)
        try:
            ok(a, "import cave, dask.dataframe as dd\nfrom distributed import Client\n"
                  f"client = Client({address!r})\n"
                  f"sales = dd.read_parquet({str(dataset)!r})\n"
                  "cave.inject('client', client, 'the team cluster')\n"
                  "cave.inject('sales', sales, '10M sales rows')")
            before = transitions(cluster)
            manifest = ok(a, "print(cave.session().runtime.manifest())").stdout
            assert transitions(cluster) == before, "building the manifest ran tasks"
            assert "20 partitions" in manifest and "amount (float64)" in manifest, manifest
            assert f"scheduler: {address}" in manifest and "workers: 2" in manifest, manifest

            model.replies = [
                reply("Summing per region on the cluster.",
                      "totals = sales.groupby('region', observed=True).amount.sum().compute()\n"
                      "print({k: float(v) for k, v in sorted(totals.items())})\n"
                      "from distributed import Client as C\n"
                      f"mine = C({address!r}, set_as_default=False)\n"
                      "print('own client workers:', len(mine.scheduler_info()['workers']))\n"
                      "mine.close()"),
                reply("Done: totals per region are in `totals`."),
            ]
            turn = a.execute("%%agent\ntotal amount per region", timeout=180)
            assert turn.status == "ok", turn.all_text
            assert transitions(cluster) > before  # it did run on the cluster
            sent = model.server.requests[-1].body
            result = json.dumps(sent["messages"][-1])
            assert str(expected_totals()).replace("'", "\\\"") in result or all(
                f"{v}" in result for v in expected_totals().values()), result
            assert "own client workers: 2" in result, result  # no approval was asked for
            assert "approval" not in turn.all_text.lower(), turn.all_text
            audit = (tmp_path / "a" / "session" / "audit.jsonl").read_text()
            port = address.rsplit(":", 1)[1]
            assert f"allow net:127.0.0.1:{port}" in audit and "injected Dask client" in audit
            saved = ok(a, "%checkpoint save dask1").stdout
            assert "Saved checkpoint 'dask1'" in saved, saved
        finally:
            a.stop()

        b = kernel(tmp_path, "b", model, CAVE_RESUME="dask1")
        try:
            first = ok(b, "import cave\nc = cave.retrieve('client')\n"
                          "print(type(c).__name__, c.scheduler.address, c.status)")
            assert "Restored checkpoint 'dask1'" in first.stdout, first.all_text
            assert f"Client {address} running" in first.stdout, first.all_text
            before = transitions(cluster)
            again = ok(b, "s = cave.retrieve('sales')\n"
                          "print(float(s.amount.sum().compute()), s.npartitions)\n"
                          "print(dict(cave.retrieve('totals')))")
            assert transitions(cluster) > before
            assert f"{sum(expected_totals().values())} 20" in again.stdout, again.all_text
            assert "'north': " in again.stdout
        finally:
            b.stop()
    finally:
        model.server.stop()
