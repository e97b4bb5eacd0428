"""What strict mode's OS confinement costs: the confine call itself, and syscalls under it.

Each round starts two fresh worker-like processes, one confined (``confine_current_process`` with
``ConfinementSpec.python_worker(scratch)``) and one not, in alternating order, and times the same
loops in both after a warm-up. Landlock is checked when a file is opened, seccomp on every
syscall the kernel cannot answer from its per-filter cache (calls whose decision depends on their
arguments), so ``getpid``/``stat`` show the filter's fixed cost and ``open`` shows Landlock's.
The confine call's own cost is reported next to the cost of starting the worker interpreter and
importing the confinement module (the baseline it adds to). Target: no ratio above 1.05 for the
pandas load; syscall ratios are reported, not targeted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _table import write_table  # noqa: E402

ROUNDS = 9
REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
from cave.security._confinement import ConfinementSpec, confine_current_process
scratch, confined = sys.argv[1], sys.argv[2] == "1"
target = os.path.join(scratch, "f")
open(target, "w").close()
out = {}
if confined:
    t = time.perf_counter()
    confine_current_process(ConfinementSpec.python_worker(scratch))
    out["confine_ms"] = (time.perf_counter() - t) * 1e3
import numpy as np, pandas as pd  # after confining: OpenBLAS starts threads at import

def getpid_loop():
    for _ in range(100_000):
        os.getpid()

def stat_loop():
    for _ in range(100_000):
        os.stat(target)

def open_loop():
    for _ in range(20_000):
        os.close(os.open(target, os.O_RDONLY))

frame = pd.DataFrame({"k": np.arange(500_000) % 97, "v": np.random.default_rng(0).random(500_000)})
def pandas_load():
    g = frame.groupby("k").v.agg(["sum", "mean"])
    frame.sort_values("v").merge(g, left_on="k", right_index=True).v.sum()

for name, fn in [("getpid", getpid_loop), ("stat", stat_loop), ("open", open_loop),
                 ("pandas", pandas_load)]:
    fn()  # warm-up
    best = []
    for _ in range(3):
        t = time.process_time()  # CPU time (user + system): robust to a busy machine
        fn()
        best.append(time.process_time() - t)
    out[name] = min(best) * 1e3
print(json.dumps(out))
"""

START = "import cave.security._confinement"


def run_child(scratch: str, confined: bool) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, scratch, "1" if confined else "0"],
        capture_output=True, text=True, check=True, cwd=scratch,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_cost_ms() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", START], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    from cave.security._confinement import strict_support

    support = strict_support()
    if not support.available:  # skip, so `make bench` still runs the other benchmarks
        print(support.describe())
        print("bench_confinement: strict mode is unavailable here, nothing measured")
        return
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    starts: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(ROUNDS):
            order = (False, True) if r % 2 == 0 else (True, False)
            for confined in order:
                results[confined].append(run_child(scratch, confined))
            starts.append(start_cost_ms())

    def med(confined: bool, key: str) -> float:
        return statistics.median(x[key] for x in results[confined])

    rows: list[list[object]] = []
    labels = {
        "getpid": "100,000 os.getpid()",
        "stat": "100,000 os.stat() in the scratch dir",
        "open": "20,000 open()+close() in the scratch dir",
        "pandas": "pandas (500k rows: groupby, sort, merge)",
    }
    for key, label in labels.items():
        off, on = med(False, key), med(True, key)
        rows.append([label, off, on, on / off])
    confine = med(True, "confine_ms")
    start = statistics.median(starts)
    rows.append(["confine_current_process() vs worker start (python + import)", start, confine,
                 confine / start])
    load = os.getloadavg()[0]
    write_table(
        "confinement",
        ["workload", "unconfined ms", "confined ms", "confined / unconfined"],
        rows,
        notes=(
            f"Median of {ROUNDS} rounds; each round one fresh confined and one unconfined "
            "process, alternating which goes first; each loop's CPU time (user + system, so "
            "time spent waiting for a CPU does not count) as the best of 3 after a warm-up. "
            f"Linux {support.kernel_release}, Landlock ABI {support.landlock_abi}. Last row "
            "(wall time): 'unconfined' is the time to start the worker interpreter and import "
            "the confinement module, 'confined' the confine call itself. Load average at the "
            f"end: {load:.2f} on {os.cpu_count()} CPUs shared with other work."
        ),
    )


if __name__ == "__main__":
    main()
