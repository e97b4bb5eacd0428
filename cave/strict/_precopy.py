"""Copying an injected object's large buffers into shared memory as soon as it is injected.

Strict mode copies each large buffer of an injected object once, into a sealed memfd region
(``_sharing``). At 4 KiB a page that copy is bound by the kernel's per-page work (allocating
and inserting each shmem page), not by memory bandwidth: ~0.5 s per GiB on a loaded 2-core
machine. Done at the first step, the step waits for all of it; done here, on a background thread
that starts at ``cave.inject``, it overlaps whatever comes before the first step (the user's
next cell, the model's first reply), and the step waits only for what is left.

A copy made early is right only if the buffer did not change between its start and the step
(the user may edit the frame in place meanwhile). That is proved, or the copy is thrown away
and the step copies as before (fails safe):

* the buffer's whole pages are write-protected with the checkpoint store's page-write tracker
  (``userfaultfd`` WP-async + ``PAGEMAP_SCAN``, Linux 6.7+) *before* the copy starts, and the
  step uses the copy only if the tracker says no page of it was written since (its invariant,
  including its rules on pinned memory and io_uring, is stated in ``checkpoint._write_tracking``);
* the partial pages at the buffer's ends (shared with neighbouring allocations, so not
  tracked) are compared byte for byte;
* the buffer is matched by address and length, and its exporter is kept alive until then, so
  no other buffer can take its place;
* where the tracker is unavailable (another OS, an older kernel, ``CAVE_CHECKPOINT_WRITE_
  TRACKING=0``, shared or file-backed memory), nothing is copied early.

Between the inject and the step, the first write to each page of the user's buffer takes one
fault handled in the kernel (as after a checkpoint); the step lifts the protection.
"""

from __future__ import annotations

import os
import pickle
import threading
from dataclasses import dataclass, field
from typing import Any

from ._sharing import SHARE_MIN_BYTES, _address, sealed_copy

__all__ = ["Precopy", "PRECOPY_MIN_BYTES"]

PRECOPY_MIN_BYTES = 16 * 2**20
"""Buffers smaller than this are copied at the step (their copy costs less than its set-up)."""


@dataclass
class _Copy:
    view: memoryview
    watch: Any
    done: threading.Event = field(default_factory=threading.Event)
    fd: int = -1
    error: BaseException | None = None


class Precopy:
    """Early copies of injected buffers, keyed by (address, length), until the next step."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._lock = threading.Lock()
        self._copies: dict[tuple[int, int], _Copy] = {}
        self._names: dict[str, list[tuple[int, int]]] = {}
        self.used = 0
        self.discarded = 0

    @staticmethod
    def prepare() -> None:
        """Import the page-write tracker (the checkpoint package: ~0.1-1 s) and open it."""
        from ..checkpoint._write_tracking import tracker

        tracker()

    def start(self, obj: Any, name: str | None = None) -> int:
        """Begin copying ``obj``'s large out-of-band buffers in the background; returns how many.

        Early copies made for an earlier object injected under the same ``name`` are dropped
        first (injecting into one name again and again must not pile up copies)."""
        if name is not None:
            self._drop_name(name)
        views: list[memoryview] = []

        def collect(buf: pickle.PickleBuffer) -> bool:
            try:
                view = buf.raw()
            except BufferError:
                return True
            if view.nbytes >= max(PRECOPY_MIN_BYTES, SHARE_MIN_BYTES):
                views.append(view)
            return False

        try:
            pickle.Pickler(_Capped(), protocol=5, buffer_callback=collect).dump(obj)
        except _Stop:
            pass  # large in-band data (a long list): inject stays cheap; keep what was found
        except Exception:
            return 0  # not plain data: the step pickles it its own way
        if not views:
            return 0
        from ..checkpoint._write_tracking import tracker

        track = tracker()
        if track is None:
            return 0
        jobs = []
        for view in views:
            key = (_address(view), view.nbytes)
            with self._lock:
                if key in self._copies:
                    continue
            watch = track.watch(*key)
            if watch is None:
                continue
            job = _Copy(view, watch)
            with self._lock:
                self._copies[key] = job
            jobs.append(job)
        if jobs:
            if name is not None:
                with self._lock:
                    self._names[name] = [(_address(j.view), j.view.nbytes) for j in jobs]
            threading.Thread(target=self._run, args=(jobs,), name="cave-strict-precopy",
                             daemon=True).start()
        return len(jobs)

    def _drop_name(self, name: str) -> None:
        with self._lock:
            keys = self._names.pop(name, [])
            jobs = [j for j in (self._copies.pop(k, None) for k in keys) if j is not None]
        self._close(jobs)

    def _close(self, jobs: list[_Copy]) -> None:
        for job in jobs:
            job.done.wait()
            _unwatch(job)
            if job.fd >= 0:
                os.close(job.fd)
            self.discarded += 1

    def _run(self, jobs: list[_Copy]) -> None:
        for job in jobs:
            try:
                job.fd = sealed_copy(self._prefix, job.view)
            except BaseException as exc:  # noqa: B036 - the step copies instead
                job.error = exc
            finally:
                job.done.set()

    def take(self, view: memoryview) -> int | None:
        """The sealed memfd of an early copy of ``view`` if it is still exact, else None.

        Waits for a copy still in progress. The caller owns the descriptor.
        """
        key = (_address(view), view.nbytes)
        with self._lock:
            job = self._copies.pop(key, None)
        if job is None:
            return None
        job.done.wait()
        exact = job.fd >= 0 and self._exact(job, view)
        _unwatch(job)
        if exact:
            self.used += 1
            return job.fd
        self.discarded += 1
        if job.fd >= 0:
            os.close(job.fd)
        return None

    @staticmethod
    def _exact(job: _Copy, view: memoryview) -> bool:
        from ..checkpoint._write_tracking import inner_pages, tracker

        track = tracker()
        if track is None or not track.untouched(job.watch):
            return False
        start = _address(view)
        inner_lo, inner_hi = inner_pages(start, view.nbytes)
        if inner_hi <= inner_lo:
            return False  # no whole page: nothing was tracked
        lo, hi = inner_lo - start, inner_hi - start
        src = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        for a, b in ((0, lo), (hi, view.nbytes)):  # the partial pages, byte for byte
            if b > a and os.pread(job.fd, b - a, a) != bytes(src[a:b]):
                return False
        return True

    def discard(self) -> None:
        """Drop copies no step used (the object was removed or replaced before a step ran)."""
        with self._lock:
            jobs, self._copies, self._names = list(self._copies.values()), {}, {}
        self._close(jobs)

    def pending(self) -> int:
        with self._lock:
            return len(self._copies)

    def wait(self) -> None:
        """Until every early copy started so far is made (benchmarks and tests)."""
        with self._lock:
            jobs = list(self._copies.values())
        for job in jobs:
            job.done.wait()


class _Stop(Exception):
    pass


class _Capped:
    """A file that takes ``INBAND_CAP`` bytes of pickle and then stops the pickler: finding the
    buffers of a DataFrame needs a few KiB; pickling a long list in-band would cost the inject
    what the step pays anyway."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        self.size += len(data)
        if self.size > INBAND_CAP:
            raise _Stop
        return len(data)


INBAND_CAP = 1 << 20


def _unwatch(job: _Copy) -> None:
    """Lift the protection: the user's own buffer takes no more faults on writes."""
    from ..checkpoint._write_tracking import tracker

    track = tracker()
    if track is not None:
        track.unwatch(job.watch)
