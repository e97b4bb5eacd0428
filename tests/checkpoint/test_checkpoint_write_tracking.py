"""Kernel page-write tracking: a cached buffer fingerprint is reused only when nothing wrote it."""

from __future__ import annotations

import os
import platform
import threading

import numpy as np
import pandas as pd
import pytest
import xxhash

from cave.checkpoint import SessionStore, _fingerprint, _write_tracking

MB = 1 << 20
PAGE_ITEMS = _write_tracking.PAGE // 8
SECRET = b"w" * 32


def _why_not_tracked() -> str:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return "page-write tracking is Linux-only (x86_64, aarch64)"
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    if (major, minor) < (6, 7):
        return "PAGEMAP_SCAN needs Linux 6.7+"
    if _write_tracking.tracker() is None:  # a sandbox may block userfaultfd: say so, do not hide
        return f"this machine's kernel refused page-write tracking ({_write_tracking.unavailable})"
    return ""


needs_tracking = pytest.mark.skipif(bool(_why_not_tracked()), reason=_why_not_tracked() or "-")


@pytest.fixture
def hashed(monkeypatch):
    """Bytes the fingerprinting actually read (xxh3 updates), to prove what was not re-read.

    Only the test's own thread counts, where saves fingerprint. A store's background re-hash of one
    trusted buffer after a save (`Verifier`, thread ``cave-checkpoint-verify``) uses the same
    hasher; counting it made an unchanged save look as if it had re-read its frame whenever that
    thread got to its hash before the test read the count (about 2 runs in 5).
    """
    seen = {"bytes": 0}
    real = _fingerprint._hasher
    test_thread = threading.get_ident()

    class Counting:
        def __init__(self, inner):
            self._inner = inner

        def update(self, data):
            if threading.get_ident() == test_thread:
                seen["bytes"] += memoryview(data).nbytes
            self._inner.update(data)

        def digest(self):
            return self._inner.digest()

        def hexdigest(self):
            return self._inner.hexdigest()

    def counting():
        h, prefix = real()
        return Counting(h), prefix

    monkeypatch.setattr(_fingerprint, "_hasher", counting)
    return seen


def view(arr) -> memoryview:
    return memoryview(arr).cast("B")


def truth(arr) -> bytes:
    return xxhash.xxh3_128(view(arr)).digest()


@needs_tracking
def test_every_kind_of_write_is_seen():
    tracker = _write_tracking.tracker()
    arr = np.random.default_rng(0).random(8 * MB // 8)
    address, length = arr.ctypes.data, arr.nbytes
    watch = tracker.watch(address, length)
    assert watch is not None and tracker.untouched(watch)

    writes = {
        # The kernel tracks the whole pages inside the buffer; the partial pages at its ends are
        # shared with malloc's bookkeeping and compared byte for byte by the caller instead.
        "first whole page": lambda: arr.__setitem__(PAGE_ITEMS, 1.5),
        "last whole page": lambda: arr.__setitem__(-PAGE_ITEMS - 1, 2.5),
        "numpy in place": lambda: arr.__imul__(1.0000001),
        "another thread": lambda: _in_thread(lambda: arr.__setitem__(len(arr) // 2, 3.5)),
        "the kernel (readinto)": lambda: _readinto(view(arr)[4 * MB : 4 * MB + 16]),
    }
    for what, write in writes.items():
        watch = tracker.watch(address, length)
        assert watch is not None and tracker.untouched(watch), what
        write()
        assert not tracker.untouched(watch), f"missed a write from {what}"
        assert not tracker.clean(address, length), what


def _in_thread(fn) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def _readinto(target: memoryview) -> None:
    with open("/proc/self/cmdline", "rb", buffering=0) as f:
        assert f.readinto(target) > 0


@needs_tracking
def test_writes_to_the_partial_pages_at_either_end_are_seen(hashed):
    for offset in (0, 3, 8):  # heap and mmap arrays start at various offsets within a page
        raw = np.random.default_rng(offset).random(8 * MB // 8 + 1024)
        arr = raw[offset : offset + 8 * MB // 8]
        for index in (0, 1, -2, -1):
            _fingerprint.buffer_digest(view(arr))
            arr[index] += 1.0
            hashed["bytes"] = 0
            assert _fingerprint.buffer_digest(view(arr)) == truth(arr), (offset, index)
            assert hashed["bytes"] == arr.nbytes


@needs_tracking
def test_memory_the_kernel_cannot_track_is_refused(tmp_path):
    tracker = _write_tracking.tracker()
    never_watched = np.ones(8 * MB // 8)
    assert not tracker.clean(never_watched.ctypes.data, never_watched.nbytes)
    import mmap

    shared = mmap.mmap(-1, 8 * MB)  # MAP_SHARED anonymous is shmem: another process may write it
    arr = np.frombuffer(shared, dtype=np.uint8)
    assert tracker.watch(arr.ctypes.data, arr.nbytes) is None
    del arr
    shared.close()

    path = tmp_path / "data.bin"
    path.write_bytes(bytes(8 * MB))
    private_file = np.memmap(path, dtype=np.uint8, mode="c")  # pages not yet copied follow the file
    assert tracker.watch(private_file.ctypes.data, private_file.nbytes) is None
    del private_file


@needs_tracking
def test_unchanged_buffer_is_not_read_again_and_a_write_is(hashed):
    arr = np.random.default_rng(1).random(16 * MB // 8)
    first = _fingerprint.buffer_digest(view(arr))
    assert first == truth(arr) and hashed["bytes"] == arr.nbytes

    hashed["bytes"] = 0
    assert _fingerprint.buffer_digest(view(arr)) == first
    assert hashed["bytes"] == 0  # the kernel said untouched: not one byte read

    arr[123456] = -7.0
    again = _fingerprint.buffer_digest(view(arr))
    assert again == truth(arr) != first and hashed["bytes"] == arr.nbytes


@needs_tracking
def test_a_new_array_at_a_freed_address_is_hashed(hashed):
    n = 16 * MB // 8
    old = np.ones(n)
    address = old.ctypes.data
    _fingerprint.buffer_digest(view(old))
    del old
    reused = None
    for _ in range(20):  # munmap then mmap of the same size usually lands at the same address
        candidate = np.zeros(n)
        if candidate.ctypes.data == address:
            reused = candidate
            break
    if reused is None:
        pytest.skip("the allocator did not reuse the address")
    hashed["bytes"] = 0
    assert _fingerprint.buffer_digest(view(reused)) == truth(reused)
    assert hashed["bytes"] == reused.nbytes


def test_turned_off_by_environment(monkeypatch, hashed):
    monkeypatch.setenv("CAVE_CHECKPOINT_WRITE_TRACKING", "0")
    monkeypatch.setattr(_write_tracking, "_tracker", None)
    monkeypatch.setattr(_write_tracking, "_tried", False)
    monkeypatch.setattr(_write_tracking, "unavailable", "")
    assert _write_tracking.tracker() is None
    assert _write_tracking.unavailable == "CAVE_CHECKPOINT_WRITE_TRACKING=0"
    arr = np.arange(8 * MB // 8, dtype=np.float64)
    for _ in range(2):
        hashed["bytes"] = 0
        assert _fingerprint.buffer_digest(view(arr)) == truth(arr)
        assert hashed["bytes"] == arr.nbytes


@needs_tracking
def test_saves_of_a_restored_and_edited_frame(tmp_path, hashed):
    """End to end: restore, save twice (the second reads nothing), edit, save (the edit lands)."""
    store = SessionStore(tmp_path / "s", secret=SECRET)
    rng = np.random.default_rng(2)
    store.save("one", {"df": pd.DataFrame(rng.random((MB, 4)), columns=list("abcd"))}, {})
    ns = dict(store.load("one").namespace)
    store.save("two", ns, {})
    assert store.verifier.wait().outcome == "match"  # its background re-hash, done before we count
    hashed["bytes"] = 0
    info = store.save("three", ns, {})
    # Tracking fails safe for the whole process (pinned memory, an io_uring, a verification that
    # turned it off): then the save hashes, correctly, and this test has nothing to measure.
    why = _write_tracking.pinned() or (
        "" if _write_tracking.tracker() is not None else str(_write_tracking.unavailable)
    )
    if why and hashed["bytes"] >= MB:
        pytest.skip(f"write tracking is not trusted in this process now: {why}")
    assert info.blobs_written == 0
    assert hashed["bytes"] < MB, f"the unchanged save re-read {hashed['bytes']:,} bytes"
    # The background check after that save re-hashes one trusted buffer (round robin over the
    # process: the frame's block, or a live buffer of an earlier test) off the save's thread.
    assert store.verifier.wait().outcome != "mismatch"

    ns["df"].iloc[MB - 1, 2] = -1.0
    info = store.save("four", ns, {})
    assert info.changes.changed == ("df",) and info.blobs_written == 1
    assert store.load("four").namespace["df"].iloc[MB - 1, 2] == -1.0  # correctness: always


@needs_tracking
def test_forked_child_does_not_trust_the_parents_cache():
    arr = np.random.default_rng(3).random(8 * MB // 8)
    _fingerprint.buffer_digest(view(arr))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            arr[5] = 99.0  # the child's copy; the parent's tracker never sees this write
            ok = _fingerprint.buffer_digest(view(arr)) == truth(arr)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert _fingerprint.buffer_digest(view(arr)) == truth(arr)  # the parent's data is unchanged


@needs_tracking
def test_a_buffer_written_between_saves_stops_being_tracked_until_it_settles(hashed):
    tracker = _write_tracking.tracker()
    arr = np.random.default_rng(4).random(8 * MB // 8)
    key = (arr.ctypes.data, arr.nbytes)
    _fingerprint.buffer_digest(view(arr))
    first = _fingerprint._known[key].watch
    assert first is not None and tracker.untouched(first)

    arr[7] = 1.25  # written while tracked: hashed, and tracking is dropped
    assert _fingerprint.buffer_digest(view(arr)) == truth(arr)
    assert _fingerprint._known[key].watch is None and not first.valid
    assert not tracker.clean(*key)  # unregistered: no page is protected any more

    arr[8] = 2.5  # still changing: hashed again, still untracked
    hashed["bytes"] = 0
    assert _fingerprint.buffer_digest(view(arr)) == truth(arr) and hashed["bytes"] == arr.nbytes
    assert _fingerprint._known[key].watch is None

    assert _fingerprint.buffer_digest(view(arr)) == truth(arr)  # unchanged since: tracked again
    assert _fingerprint._known[key].watch is not None
    hashed["bytes"] = 0
    assert _fingerprint.buffer_digest(view(arr)) == truth(arr) and hashed["bytes"] == 0
    arr[9] = 3.75
    assert _fingerprint.buffer_digest(view(arr)) == truth(arr)  # and a write is still seen


def test_owner_lookup_stops_on_a_cycle_of_base_attributes():
    class Odd:
        pass

    a, b = Odd(), Odd()
    a.base, b.base = b, a

    class Exporter(bytearray):
        base = a

    view = memoryview(Exporter(16))
    assert _fingerprint._owner(view) in (a, b)  # returns instead of looping forever
