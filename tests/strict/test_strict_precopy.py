"""Early copies of injected buffers (``cave.strict._precopy``): used only while provably exact.

Real memfds and the kernel's page-write tracker; no kernel process needed. The differential test
writes into the source at random places and moments (some while the copy runs) and checks that
what the step shares is always the source's bytes at the step, whichever path it took.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from cave.checkpoint._write_tracking import tracker
from cave.strict._precopy import PRECOPY_MIN_BYTES, Precopy
from cave.strict._sharing import Regions

pytestmark = pytest.mark.skipif(tracker() is None, reason="no page-write tracking on this kernel")


def _regions() -> Regions:
    regions = Regions("t", keep_fds=True)
    regions.precopy = Precopy("t")
    return regions


def _shared(regions: Regions, obj: np.ndarray) -> np.ndarray:
    packed = regions.dumps(obj)
    (view,) = regions.buffers(packed)
    return np.frombuffer(view, dtype=obj.dtype)


def test_an_unchanged_buffer_is_copied_at_inject_not_at_the_step() -> None:
    regions = _regions()
    a = np.arange(2 * PRECOPY_MIN_BYTES // 8, dtype=np.float64)
    assert regions.precopy.start(a) == 1
    regions.precopy.wait()
    shared = _shared(regions, a)
    assert regions.precopy.used == 1 and regions.precopy.discarded == 0
    assert np.array_equal(shared, a)
    regions.close()


@pytest.mark.parametrize("index", [0, 1000, -1], ids=["first", "middle", "last"])
def test_a_write_after_inject_throws_the_early_copy_away(index: int) -> None:
    regions = _regions()
    a = np.arange(2 * PRECOPY_MIN_BYTES // 8, dtype=np.float64)
    regions.precopy.start(a)
    regions.precopy.wait()
    a[index] = -1.0
    shared = _shared(regions, a)
    assert regions.precopy.used == 0 and regions.precopy.discarded == 1
    assert shared[index] == -1.0 and np.array_equal(shared, a)
    regions.close()


def test_small_buffers_and_other_objects_are_left_to_the_step() -> None:
    regions = _regions()
    assert regions.precopy.start(np.zeros(1000)) == 0
    assert regions.precopy.start(lambda: None) == 0
    regions.close()


def test_an_unused_early_copy_is_discarded_at_the_next_step() -> None:
    regions = _regions()
    a = np.ones(2 * PRECOPY_MIN_BYTES // 8)
    regions.precopy.start(a)
    regions.precopy.discard()
    assert regions.precopy.pending() == 0 and regions.precopy.discarded == 1
    regions.close()


def test_injecting_into_one_name_again_drops_the_earlier_copy() -> None:
    regions = _regions()
    first, second = np.ones(2 * PRECOPY_MIN_BYTES // 8), np.zeros(2 * PRECOPY_MIN_BYTES // 8)
    regions.precopy.start(first, "df")
    regions.precopy.start(second, "df")
    assert regions.precopy.pending() == 1 and regions.precopy.discarded == 1
    assert np.array_equal(_shared(regions, second), second) and regions.precopy.used == 1
    regions.close()


@pytest.mark.parametrize("seed", range(8))
def test_the_shared_bytes_are_the_sources_at_the_step_whichever_path(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.randrange(PRECOPY_MIN_BYTES, PRECOPY_MIN_BYTES + 8 * 2**20)
    offset = rng.randrange(0, 4096)  # an unaligned start: partial pages at both ends
    backing = np.zeros(size + 8192, dtype=np.uint8)
    src = backing[offset : offset + size]
    src[:] = np.frombuffer(rng.randbytes(4096), dtype=np.uint8).repeat(size // 4096 + 1)[:size]
    regions = _regions()
    regions.precopy.start(src)
    for _ in range(rng.randrange(0, 3)):  # while the copy may still run
        src[rng.randrange(size)] ^= 0xFF
    if rng.random() < 0.5:
        regions.precopy.wait()
        for _ in range(rng.randrange(0, 3)):  # after it
            src[rng.choice([0, size - 1, rng.randrange(size)])] ^= 0xFF
    shared = _shared(regions, src)
    assert np.array_equal(shared, src)
    assert regions.precopy.used + regions.precopy.discarded == 1
    regions.close()
