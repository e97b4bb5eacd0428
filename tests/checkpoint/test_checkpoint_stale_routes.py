"""Issue 9: each route by which write tracking once let a checkpoint store stale bytes.

Every test saves real checkpoints and compares what comes back with the live bytes.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np
import pandas as pd
import pytest
from _kernel_writes import FixedBufferRing, anonymous_page_over, perf_page_over
from test_checkpoint_write_tracking import needs_tracking

from cave.checkpoint import SessionStore, _fingerprint, _write_tracking

PAGE = _write_tracking.PAGE
SECRET = b"k" * 32
VERIFY_OFF = {"verify_every": 0}  # these tests show the tracker itself, without the safety net


@pytest.fixture
def store(tmp_path):
    return SessionStore(tmp_path / "s", secret=SECRET, **VERIFY_OFF)


def _assert_live(store: SessionStore, name: str, ns: dict) -> None:
    restored = store.load(name).namespace
    for key, live in ns.items():
        if isinstance(live, np.ndarray):
            assert np.array_equal(restored[key], live), f"{key} restored stale from {name}"
        elif isinstance(live, pd.DataFrame):
            pd.testing.assert_frame_equal(restored[key], live)


@needs_tracking
def test_a_new_view_over_an_edited_page_does_not_hide_the_edit(store):
    """The issue's reproduction: the view, bound first, is watched first and re-protected the
    base's written page, which then looked untouched."""
    a = np.arange(8 << 20, dtype=np.float64)  # 64 MiB: tracked
    ns: dict = {"part": None, "A": a}
    store.save("c1", ns, {})
    store.save("c2", ns, {})
    a[5_000_000] = -1.0
    ns["part"] = a[4_000_000:6_000_000]
    store.save("c3", ns, {})
    assert store.load("c3").namespace["A"][5_000_000] == -1.0
    _assert_live(store, "c3", ns)


@needs_tracking
def test_a_new_slice_of_an_edited_frame_column_does_not_hide_the_edit(store):
    df = pd.DataFrame({"x": np.arange(1 << 21, dtype=np.float64), "y": 1.0})
    ns: dict = {"col": None, "df": df}
    store.save("c1", ns, {})
    store.save("c2", ns, {})
    df.iloc[700_000, 0] = -3.0
    ns["col"] = df["x"].to_numpy()[200_000:1_500_000]  # 10 MB: tracked
    store.save("c3", ns, {})
    assert store.load("c3").namespace["df"].iloc[700_000, 0] == -3.0


def _io_uring_usable() -> str:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            if f.read().strip() == "2":
                return "io_uring is disabled on this machine (kernel.io_uring_disabled=2)"
    except OSError:
        pass
    return ""


@needs_tracking
@pytest.mark.skipif(bool(_io_uring_usable()), reason=_io_uring_usable() or "-")
def test_a_fixed_buffer_read_by_io_uring_is_not_missed(store, tmp_path):
    """``IORING_OP_READ_FIXED`` copies into pinned pages through the kernel's mapping: no fault,
    so the page tables never show the write."""
    a = np.random.default_rng(9).random((8 << 20) // 8)
    target = (a.ctypes.data + 2 * PAGE) & ~(PAGE - 1)
    ring = FixedBufferRing(target, PAGE)
    try:
        ns = {"A": a}
        for i in range(4):  # long enough for any adaptive tracking to trust the buffer again
            store.save(f"c{i}", ns, {})
        source = tmp_path / "source.bin"
        source.write_bytes(b"\xab" * PAGE)
        fd = os.open(source, os.O_RDONLY)
        try:
            assert ring.read(fd, PAGE) == PAGE
        finally:
            os.close(fd)
        assert a.view(np.uint8)[target - a.ctypes.data] == 0xAB  # the live bytes changed
        store.save("after", ns, {})
        _assert_live(store, "after", ns)
    finally:
        ring.close()


@needs_tracking
def test_a_pfnmap_mapping_over_a_tracked_page_is_not_missed(store):
    """A perf ring buffer's control page (``VM_PFNMAP``) mapped with ``MAP_FIXED`` over a tracked
    page: a scan that skips such mappings silently would call the range untouched."""
    a = np.random.default_rng(10).random((8 << 20) // 8)
    target = (a.ctypes.data + 3 * PAGE) & ~(PAGE - 1)
    ns = {"A": a}
    store.save("c1", ns, {})
    store.save("c2", ns, {})
    try:
        perf_page_over(target, PAGE)
    except OSError as exc:  # perf_event_paranoid=3 or a seccomp filter
        pytest.skip(f"perf_event_open refused here: {exc}")
    try:
        store.save("c3", ns, {})
        _assert_live(store, "c3", ns)
    finally:
        anonymous_page_over(target, PAGE)  # a plain page again before the array is freed


def test_a_memoryview_comes_back_as_a_memoryview(store):
    raw = bytearray(b"0123456789abcdef")
    ns = {
        "mv": memoryview(raw),
        "ro": memoryview(b"read only"),
        "shaped": memoryview(bytearray(range(24))).cast("i", (2, 3)),
        "big": memoryview(np.arange(1 << 20, dtype=np.float64)),
    }
    store.save("c1", ns, {})
    back = store.load("c1").namespace
    for name, live in ns.items():
        got = back[name]
        assert isinstance(got, memoryview), f"{name} came back as {type(got).__name__}"
        assert (got.format, got.shape, got.readonly) == (live.format, live.shape, live.readonly)
        assert got.tobytes() == live.tobytes()


@needs_tracking
def test_a_hole_or_a_foreign_mapping_in_a_watched_range_is_never_untouched():
    tracker = _write_tracking.tracker()
    a = np.random.default_rng(11).random((8 << 20) // 8)
    watch = tracker.watch(a.ctypes.data, a.nbytes)
    assert watch is not None and tracker.untouched(watch)
    page = (a.ctypes.data + 5 * PAGE) & ~(PAGE - 1)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    assert libc.munmap(page, PAGE) == 0
    try:
        assert not tracker.untouched(watch)  # a hole: pagemap walks skip it, msync does not
    finally:
        anonymous_page_over(page, PAGE)  # the array may be freed safely again
    assert not tracker.untouched(watch)  # a mapping the tracker did not register


@needs_tracking
def test_nothing_is_watched_or_trusted_while_memory_is_pinned_or_locked(tmp_path):
    tracker = _write_tracking.tracker()
    a = np.random.default_rng(12).random((8 << 20) // 8)
    watch = tracker.watch(a.ctypes.data, a.nbytes)
    assert watch is not None and tracker.untouched(watch) and _write_tracking.pinned() == ""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mlock.argtypes = libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    spare = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    address = ctypes.addressof(ctypes.c_char.from_buffer(spare))
    if libc.mlock(address, PAGE) != 0:
        pytest.skip(f"mlock refused here (errno {ctypes.get_errno()})")
    try:
        assert "VmLck" in _write_tracking.pinned()
        assert not tracker.untouched(watch)
        assert tracker.watch(a.ctypes.data, a.nbytes) is None
    finally:
        libc.munlock(address, PAGE)
        spare.close()
    assert tracker.untouched(watch)  # nothing was written meanwhile


@needs_tracking
@pytest.mark.skipif(bool(_io_uring_usable()), reason=_io_uring_usable() or "-")
def test_an_open_io_uring_alone_stops_trust():
    tracker = _write_tracking.tracker()
    a = np.random.default_rng(13).random((8 << 20) // 8)
    spare = np.zeros(PAGE * 2, dtype=np.uint8)
    ring = FixedBufferRing((spare.ctypes.data + PAGE - 1) & ~(PAGE - 1), PAGE)
    try:
        assert _write_tracking.pinned()
        assert tracker.watch(a.ctypes.data, a.nbytes) is None
    finally:
        ring.close()


@needs_tracking
@pytest.mark.parametrize("view_first", [True, False])
def test_overlapping_views_settle_into_being_trusted(tmp_path, view_first):
    """Revocation must not make a view and its base revoke each other at every save."""
    a = np.random.default_rng(14).random((16 << 20) // 8)
    ns = {"v": a[100_000:1_500_000], "A": a} if view_first else {"A": a, "v": a[100_000:]}
    store = SessionStore(tmp_path / "s", secret=SECRET, **VERIFY_OFF)
    store.save("c0", ns, {})
    a[1_000_000] = 5.0  # written: both are hashed, then tracked again once they settle
    for i in range(1, 4):
        store.save(f"c{i}", ns, {})
    watches = [e.watch for e in _fingerprint._known.values() if e.owner and e.owner() is a.base]
    watches += [e.watch for e in _fingerprint._known.values() if e.owner and e.owner() is a]
    assert len(watches) == 2 and all(w is not None and w.valid for w in watches)
    _assert_live(store, "c3", ns)
