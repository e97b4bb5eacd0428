"""The namespace the checkpoint benchmarks save: a 1 GiB DataFrame plus 100 small objects."""

from __future__ import annotations

from typing import Any

from _disk import GIB


def big_frame_namespace(gib: float) -> dict[str, Any]:
    """``big``: a ``gib``-sized float64 DataFrame (16 columns); ``small0`` .. ``small99``: dicts,
    lists, strings and small arrays, a quarter each."""
    import numpy as np
    import pandas as pd

    cols = 16
    rows = int(gib * GIB) // 8 // cols
    rng = np.random.default_rng(0)
    ns: dict[str, Any] = {
        "big": pd.DataFrame(rng.random((rows, cols)), columns=[f"c{i}" for i in range(cols)])
    }
    for i in range(100):
        kind = i % 4
        if kind == 0:
            ns[f"small{i}"] = {"id": i, "tags": ["a", "b", "c"], "score": i / 7}
        elif kind == 1:
            ns[f"small{i}"] = list(range(i * 10))
        elif kind == 2:
            ns[f"small{i}"] = f"text {i} " * 20
        else:
            ns[f"small{i}"] = np.arange(i * 100, dtype=np.float64)
    return ns
