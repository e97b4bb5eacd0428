"""Helpers for the describer tests: the flat-cost and size-bound checks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cave.runtime._manifest import describe


def best_of(fn: Callable[[], Any], n: int = 5) -> float:
    """The fastest of ``n`` runs: the least noisy estimate of a cost on a busy machine."""
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def assert_flat(small: Any, big: Any) -> None:
    """Describing ``big`` (10M rows) costs what describing ``small`` (10 rows) does.

    Not a timer race: both are measured in the same run and compared with a wide margin (a scan
    of 10M rows costs tens of milliseconds; describing costs well under one).
    """
    describe("small", small)
    describe("big", big)  # warm both (first lookups load the describer module)
    t_small = best_of(lambda: describe("small", small))
    t_big = best_of(lambda: describe("big", big))
    assert t_big < 5 * t_small + 0.005, (t_small, t_big)


def assert_bounded(text: str) -> None:
    assert len(text) <= 1500, len(text)
