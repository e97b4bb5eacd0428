"""Manifest build time for 100 injected objects: one ~1 GB DataFrame vs the same with 10 rows.

The manifest is rebuilt before every model call, so its cost must not grow with the data. Both
cases hold the same 99 other objects (small frames, arrays, containers, text, callables, classes);
only the big DataFrame differs: 16,777,216 rows x 8 float64 columns (1 GiB, filled, so its pages
are resident) against 10 rows x 8. Target: <= 5 ms per manifest, ratio ~1.

Run: .venv/bin/python benchmarks/bench_manifest.py [--rows N] [--repeat K]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _table import write_table  # noqa: E402

from cave.runtime._namespace import AgentRuntime  # noqa: E402


def others() -> list[tuple[str, Any, str | None]]:
    """99 everyday objects, the same in both cases."""
    import collections
    import json

    import numpy as np
    import pandas as pd

    def clean(frame: Any, *, drop_na: bool = True) -> Any:
        """Drop empty rows and normalise column names."""
        return frame

    class Scorer:
        """Scores a forecast against actuals."""

        def __init__(self, metric: str = "mae") -> None:
            self.metric = metric

    objs: list[tuple[str, Any, str | None]] = []
    for i in range(15):
        objs.append((f"small_df{i}", pd.DataFrame(np.ones((50, 6))), f"small table {i}"))
    for i in range(15):
        objs.append((f"arr{i}", np.arange(10_000, dtype=np.float64).reshape(100, 100), None))
    for i in range(15):
        objs.append((f"items{i}", list(range(100_000)), "a long list"))
    for i in range(15):
        objs.append((f"lookup{i}", {f"k{j}": j for j in range(10_000)}, None))
    for i in range(10):
        objs.append((f"tags{i}", set(range(10_000)), None))
    for i in range(10):
        objs.append((f"text{i}", "lorem ipsum " * 10_000, "a document"))
    for i in range(8):
        objs.append((f"fn{i}", clean, "cleaning helper"))
    for i in range(5):
        objs.append((f"cls{i}", Scorer, None))
    objs += [
        ("threshold", 0.75, "alert threshold"),
        ("json_mod", json, None),
        ("counts", collections.Counter({f"w{j}": j for j in range(10_000)}), None),
        ("series", pd.Series(np.ones(100_000), name="load"), None),
        ("flag", True, None),
        ("nothing", None, None),
    ]
    assert len(objs) == 99, len(objs)
    return objs


def build(big_rows: int) -> AgentRuntime:
    import numpy as np
    import pandas as pd

    data = np.empty((big_rows, 8), dtype=np.float64)
    data[:] = 1.5  # touch every page: a really resident 1 GiB, not a lazy calloc
    frame = pd.DataFrame(data, columns=[f"c{i}" for i in range(8)], copy=False)
    rt = AgentRuntime()
    rt.inject("big", frame, "the large table")
    for name, obj, description in others():
        rt.inject(name, obj, description)
    rt.run("answer = 42\nnames = ['a', 'b']", echo=False)
    return rt


def described(text: str) -> int:
    """How many objects the manifest described (the rest are named in one line)."""
    return sum(
        1
        for line in text.splitlines()[1:]
        if line[:1].isalpha() and not line.startswith("Variables you created")
    )


def measure(runtimes: list[AgentRuntime], repeat: int) -> list[tuple[float, float, int, int]]:
    """Time the runtimes' manifests interleaved, so machine noise hits both cases alike."""
    times: list[list[float]] = [[] for _ in runtimes]
    texts = [rt.manifest() for rt in runtimes]  # warm up
    for i in range(repeat):
        order = range(len(runtimes)) if i % 2 == 0 else reversed(range(len(runtimes)))
        for k in order:
            t0 = time.perf_counter()
            runtimes[k].manifest()
            times[k].append((time.perf_counter() - t0) * 1000)
    out = []
    for ts, text in zip(times, texts, strict=True):
        ts.sort()
        out.append((statistics.median(ts), ts[int(len(ts) * 0.9) - 1], len(text), described(text)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16_777_216)
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args()
    small, big = build(10), build(args.rows)
    gib = big.namespace["big"].shape[0] * 8 * 8 / 2**30
    (big_med, big_p90, big_chars, big_n), (small_med, small_p90, small_chars, small_n) = measure(
        [big, small], args.repeat
    )
    rows = [
        [
            f"100 objects, DataFrame {args.rows:,} x 8 ({gib:.2f} GiB)",
            big_med,
            big_p90,
            big_chars,
            big_n,
        ],
        ["100 objects, DataFrame 10 x 8", small_med, small_p90, small_chars, small_n],
        [
            "ratio big / small",
            big_med / small_med,
            big_p90 / small_p90,
            big_chars / small_chars,
            None,
        ],
    ]
    write_table(
        "manifest",
        ["case", "median ms", "p90 ms", "manifest chars", "objects described"],
        rows,
        notes=(
            f"{args.repeat} builds each, interleaved, same process. "
            "Target: <= 5 ms median and ratio ~1. "
            "Objects past the 12,000-char budget are named, not described (and cost nothing)."
        ),
    )


if __name__ == "__main__":
    main()
