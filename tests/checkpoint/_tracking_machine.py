"""A randomized differential model of checkpoint write tracking (hypothesis stateful testing).

The machine drives a live namespace through what notebooks do to large buffers (new arrays and
frames, views and slices bound to names in any order, names rebound and deleted, writes through
arrays, views, ``ctypes.memmove``, ``readinto``, pandas setters and other threads), saves it into
a real `SessionStore`, and after every save restores the checkpoint and compares every restored
byte with the live bytes. Write tracking is the only shortcut a save takes, so a mismatch is a
tracking bug. Verification is off in the store: this tests the tracker, not its safety net.

``MIN_TRACKED`` is lowered so that buffers of 64 KiB to 1 MiB are tracked (fast examples; heap
allocations share their edge pages with other objects, which the partial-page logic must handle).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import threading
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cave.checkpoint import SessionStore, _write_tracking

NAMES = ("a", "b", "c", "d")
SIZES = (64 << 10, (256 << 10) + 24, 1 << 20)
MIN_TRACKED = 16 << 10
STATS = {"saves": 0, "trusted": 0}
"""How many saves ran, and how many times the tracker vouched for a buffer (to show the model
exercises the fast path, not only hashing)."""

_SOURCE = os.path.join(tempfile.gettempdir(), f"cave-fuzz-source-{os.getpid()}.bin")


def count_trusted() -> None:
    """Wrap `WriteTracker.untouched` to count its yeses in `STATS` (idempotent)."""
    real = _write_tracking.WriteTracker.untouched
    if getattr(real, "_counted", False):
        return

    def untouched(self: Any, watch: Any) -> bool:
        result = real(self, watch)
        STATS["trusted"] += bool(result)
        return result

    untouched._counted = True  # type: ignore[attr-defined]
    _write_tracking.WriteTracker.untouched = untouched  # type: ignore[method-assign]


def _bytes_of(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return (tuple(value.columns), tuple(value.dtypes.astype(str)), value.to_numpy().tobytes())
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    return value


class TrackingMachine(RuleBasedStateMachine):
    runs = 0

    def __init__(self) -> None:
        super().__init__()
        TrackingMachine.runs += 1  # an fsspec memory store: no fsync per save on a busy machine
        self.url = f"memory://cave-fuzz-{os.getpid()}-{TrackingMachine.runs}"
        self.store = SessionStore(self.url, secret=b"f" * 32, verify_every=0)
        self.ns: dict[str, Any] = dict.fromkeys(NAMES)  # names keep their first position
        self.seq = 0
        self.restored = -1
        if not os.path.exists(_SOURCE):
            with open(_SOURCE, "wb") as f:
                f.write(os.urandom(1 << 20))

    def teardown(self) -> None:
        try:
            self.save_and_compare()  # the session's last checkpoint, whatever came before it
        finally:
            self.ns.clear()
            import fsspec

            fsspec.filesystem("memory").rm(self.url, recursive=True)

    # --- what the namespace holds ------------------------------------------------------------

    def _arrays(self) -> list[str]:
        return [n for n, v in self.ns.items() if isinstance(v, np.ndarray) and v.size]

    def _writable(self) -> list[str]:
        return [n for n in self._arrays() if self.ns[n].flags.writeable]

    def _frames(self) -> list[str]:
        return [n for n, v in self.ns.items() if isinstance(v, pd.DataFrame) and len(v)]

    @initialize(sizes=st.lists(st.sampled_from(SIZES), min_size=2, max_size=2))
    def start(self, sizes: list[int]) -> None:
        """A session that already holds two arrays and a frame, checkpointed once."""
        self.new_array("c", sizes[0], 0)
        self.new_frame("b", 8 << 10)
        self.new_array("d", sizes[1], 1)
        self.save_and_compare()

    @rule(
        name=st.sampled_from(NAMES),
        size=st.sampled_from(SIZES),
        seed=st.integers(0, 9),
        frame=st.sampled_from((False, False, False, True)),
    )
    def new_object(self, name: str, size: int, seed: int, frame: bool) -> None:
        if frame:
            self.new_frame(name, size // 16)
        else:
            self.new_array(name, size, seed)

    def new_array(self, name: str, size: int, seed: int) -> None:
        self.ns[name] = np.random.default_rng(seed).random(size // 8)

    def new_frame(self, name: str, rows: int) -> None:
        base = np.arange(rows, dtype=np.float64)
        self.ns[name] = pd.DataFrame({"x": base, "y": base * 2.0, "z": 1.5})

    @precondition(lambda self: bool(self._arrays()))
    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def take_view(self, data: st.DataObject, name: str) -> None:
        src = self.ns[data.draw(st.sampled_from(self._arrays()))]
        # Mostly large contiguous views (tracked themselves), sometimes small or strided ones.
        start = data.draw(st.integers(0, len(src) // 2))
        stop = data.draw(st.sampled_from((len(src), len(src), start + 1 + len(src) // 3)))
        step = data.draw(st.sampled_from((1, 1, 1, 2)))
        self.ns[name] = src[start : min(stop, len(src)) : step]

    @precondition(lambda self: any(self._earlier(n) for n in self._arrays()))
    @rule(data=st.data(), edit=st.booleans())
    def rebind_an_earlier_name_to_a_view(self, data: st.DataObject, edit: bool) -> None:
        """What an agent turn does with a variable from an earlier turn: maybe ``A[i] = v``, then
        ``part = A[j:]``, where ``part`` keeps its place before ``A`` in the namespace."""
        src_name = data.draw(st.sampled_from([n for n in self._arrays() if self._earlier(n)]))
        src = self.ns[src_name]
        if edit and src.flags.writeable:
            src[data.draw(st.integers(0, len(src) - 1))] = data.draw(st.floats(-1e6, 1e6))
        start = data.draw(st.integers(0, len(src) // 2))
        self.ns[data.draw(st.sampled_from(self._earlier(src_name)))] = src[start:]

    def _earlier(self, name: str) -> list[str]:
        names = list(self.ns)
        return names[: names.index(name)]

    @precondition(lambda self: bool(self._frames()))
    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def take_column_slice(self, data: st.DataObject, name: str) -> None:
        df = self.ns[data.draw(st.sampled_from(self._frames()))]
        col = df[data.draw(st.sampled_from(list(df.columns)))].to_numpy()  # read-only view
        start = data.draw(st.integers(0, len(col) - 1))
        self.ns[name] = col[start:]

    @rule(name=st.sampled_from(NAMES))
    def delete(self, name: str) -> None:
        self.ns.pop(name, None)  # re-binding it later puts it last (and frees it: refcounts)

    # --- writes ---------------------------------------------------------------------------------

    @precondition(lambda self: bool(self._writable()))
    @rule(
        data=st.data(),
        how=st.sampled_from(("element", "range", "memmove", "readinto", "thread")),
    )
    def write(self, data: st.DataObject, how: str) -> None:
        """Write through an array or a view: NumPy, ``ctypes.memmove``, the kernel, a thread."""
        names = self._writable()
        if how in ("memmove", "readinto", "thread"):
            names = [n for n in names if self.ns[n].flags.c_contiguous]
            if not names:
                return
        arr = self.ns[data.draw(st.sampled_from(names))]
        if how == "element":
            arr.flat[data.draw(st.integers(0, arr.size - 1))] = data.draw(st.floats(-1e6, 1e6))
            return
        if how == "range":
            start = data.draw(st.integers(0, arr.size - 1))
            arr[start : start + data.draw(st.integers(1, 5000))] += 1.0
            return
        nbytes = arr.nbytes
        offset = data.draw(st.integers(0, nbytes - 1))
        length = min(data.draw(st.integers(1, 3 * 4096)), nbytes - offset)
        target = memoryview(arr).cast("B")[offset : offset + length]
        if how == "memmove":
            src = np.full(length, 0x5A, dtype=np.uint8)
            ctypes.memmove(arr.ctypes.data + offset, src.ctypes.data, length)
        elif how == "readinto":  # the kernel copies into our pages (read(2))
            with open(_SOURCE, "rb", buffering=0) as f:
                f.readinto(target)
        else:
            t = threading.Thread(target=lambda: target.__setitem__(0, (target[0] + 1) % 256))
            t.start()
            t.join()
        target.release()

    @precondition(lambda self: bool(self._frames()))
    @rule(data=st.data(), value=st.floats(-1e6, 1e6))
    def write_frame(self, data: st.DataObject, value: float) -> None:
        df = self.ns[data.draw(st.sampled_from(self._frames()))]
        row = data.draw(st.integers(0, len(df) - 1))
        df.iloc[row, data.draw(st.integers(0, df.shape[1] - 1))] = value

    # --- checkpoints ------------------------------------------------------------------------

    @rule()
    def save_and_compare(self) -> None:
        self.seq += 1
        name = f"c{self.seq}"
        self.store.save(name, self.ns, {})
        STATS["saves"] += 1
        restored = self.store.load(name).namespace
        for key, live in self.ns.items():
            assert _bytes_of(restored.get(key)) == _bytes_of(live), (
                f"checkpoint {name} restored {key!r} with bytes that differ from the live ones"
            )

    @rule()
    def save_again(self) -> None:
        """Saves are as common as writes in a session (a second rule doubles their share)."""
        self.save_and_compare()

    @precondition(lambda self: self.seq % 4 == 3 and self.restored != self.seq)  # now and then
    @rule()
    def restore(self) -> None:
        """Continue from the newest checkpoint: its arrays live in the restored blobs' memory."""
        self.restored = self.seq
        self.store.load(f"c{self.seq}", into=self.ns)

    @invariant()
    def tracking_is_on(self) -> None:
        assert _write_tracking.tracker() is not None
