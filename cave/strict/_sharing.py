"""Objects that cross the broker channel: pickle protocol 5, large buffers in shared memory.

A buffer of at least ``SHARE_MIN_BYTES`` that is not already shared is copied once into a new
*region*: a sealed memfd (``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``, so neither side can shrink
it under the other's mappings and fault it), mapped ``MAP_SHARED`` on both sides and passed with
``SCM_RIGHTS``. The object is then rebuilt on the mapping, so both processes hold the same memory:
a column the agent edits in place is the column ``cave.retrieve`` returns, with no copy per step.
A buffer already in a region travels as ``(region, offset, length)``: a few bytes.

Change detection compares fingerprints: a hash of the object's pickle in which shared buffers are
named, not hashed (their bytes are the same memory on both sides, so they need no transfer).

A region lives while an object built on it does, or while the kernel keeps its descriptor (to
re-send it to a respawned worker); the kernel drops descriptors of regions nothing uses any more.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import itertools
import mmap
import os
import pickle
from dataclasses import dataclass, field
from typing import Any

from ..runtime._held import LoadsAsAgentCode

__all__ = ["Regions", "Packed", "WorkerOnly", "WorkerValue", "SHARE_MIN_BYTES", "sealed_copy"]

SHARE_MIN_BYTES = 64 * 1024
"""Buffers smaller than this travel in the pickle (a region costs a descriptor and a mapping)."""

_CHUNK = 64 * 2**20
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


@dataclass(frozen=True)
class WorkerOnly:
    """Stands in the kernel's namespace for a value that lives only in the strict-mode worker.

    A generator, an open socket the agent made, a lock: the worker keeps using it across steps,
    but it cannot be pickled (not even by value), so it cannot reach the kernel and is lost if
    the worker restarts; ``cave.retrieve`` returns this. (What pickles by value, such as a
    function or class the agent defined, is a :class:`WorkerValue` instead.)
    """

    name: str
    type_name: str
    reason: str

    def __repr__(self) -> str:
        return f"<{self.type_name} {self.name!r}: only in the strict-mode worker ({self.reason})>"


class WorkerValue(LoadsAsAgentCode):
    """What agent code defined in the strict-mode worker, held by the kernel as unloaded bytes.

    A function, a class, an instance of one, or a container holding them: the worker pickles it
    by value (``_byvalue``); the kernel's loader refuses it (it could name any callable), so the
    kernel keeps the pickle, and the shared buffers it refers to, and sends them unread to the
    next worker after a crash, a memory limit or a restart, and into checkpoints. In guard mode
    the next agent step loads it, inside the guard (``runtime._held``). ``cave.retrieve``
    returns this object until then.
    """

    __slots__ = ("name", "type_name", "data", "buffers")

    def __init__(self, name: str, type_name: str, data: bytes,
                 buffers: tuple[memoryview, ...] = ()) -> None:
        self.name, self.type_name, self.data = name, type_name, bytes(data)
        self.buffers = tuple(memoryview(b) for b in buffers)

    def __reduce__(self) -> Any:
        """For checkpoints: the bytes as they are, large buffers out of band (never loaded)."""
        return WorkerValue, (self.name, self.type_name, self.data,
                             tuple(pickle.PickleBuffer(b) for b in self.buffers))

    def load(self, namespace: dict[str, Any]) -> Any:
        """The value itself. Runs code the agent wrote: only where agent code may run."""
        from ._byvalue import loads

        return loads(self.data, self.buffers, namespace)

    def __repr__(self) -> str:
        size = len(self.data) + sum(b.nbytes for b in self.buffers)
        return (f"<{self.type_name} {self.name!r} defined by agent code in the strict-mode worker:"
                f" the kernel holds it as {size:,} pickled bytes it never loads (they could run "
                "code the confined worker chose); it survives worker restarts and checkpoints; "
                "in guard mode the next agent step loads it, under the guard>")


@dataclass(frozen=True)
class Packed:
    """One pickled object: its bytes, where its out-of-band buffers are, and new regions."""

    data: bytes
    refs: tuple[tuple[str, int, int], ...]
    new_regions: tuple[str, ...] = field(default=())


class _Region:
    __slots__ = ("rid", "fd", "size", "start", "mm", "__weakref__")

    def __init__(self, rid: str, fd: int, size: int, mm: mmap.mmap) -> None:
        self.rid, self.fd, self.size, self.mm = rid, fd, size, mm
        self.start = _address(mm) if size else 0


def _address(buf: Any) -> int:
    """Start address of a buffer (writable ones via ctypes, read-only ones via numpy)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    except TypeError:
        import numpy as np

        return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)


class Regions:
    """The shared-memory regions one process knows, by id, with their descriptors."""

    def __init__(self, prefix: str, *, keep_fds: bool) -> None:
        self.prefix = prefix
        self.keep_fds = keep_fds
        """The kernel keeps descriptors (to re-send after a respawn); the worker closes them."""
        self._ids = itertools.count(1)
        self._by_id: dict[str, _Region] = {}
        self._spans: list[tuple[int, int, str]] = []
        self.created_bytes = 0
        self.precopy: Any = None
        """The kernel's early copies of injected buffers (``_precopy.Precopy``), or None."""

    # -- making and adopting regions -------------------------------------------------------
    def create(self, view: memoryview) -> _Region:
        """Copy ``view`` into a new sealed memfd region (the one copy).

        Written with ``pwrite`` before mapping: copying through a fresh mapping faults every
        page in one at a time, which measured ~10x slower for 1 GiB on a busy machine.
        """
        size = view.nbytes
        early = self.precopy.take(view) if self.precopy is not None and size else None
        # an early copy was made since inject and proved unchanged since: no copy now
        fd = early if early is not None else sealed_copy(self.prefix, view)
        try:
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self.created_bytes += size
        return self._add(f"{self.prefix}{next(self._ids)}", fd, size, mm, own=True)

    def adopt(self, rid: str, fd: int) -> _Region:
        """Map a region the other side made; refuses descriptors that could fault us later."""
        if rid in self._by_id:
            os.close(fd)
            return self._by_id[rid]
        try:
            st = os.fstat(fd)
            import stat

            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"region {rid!r}: not a memfd")
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if seals & _SEALS != _SEALS:
                raise ValueError(f"region {rid!r}: not sealed against shrinking")
            size = st.st_size
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return self._add(rid, fd, size, mm)

    def _add(self, rid: str, fd: int, size: int, mm: mmap.mmap, *, own: bool = False) -> _Region:
        region = _Region(rid, fd, size, mm)
        if not self.keep_fds and not own:  # a region we made keeps its fd until take_fd()
            os.close(fd)
            region.fd = -1
        self._by_id[rid] = region
        self._spans.append((region.start, region.start + size, rid))
        return region

    def fd(self, rid: str) -> int:
        return self._by_id[rid].fd

    def take_fd(self, rid: str) -> int:
        """Hand over the descriptor of a region we made (the worker sends it, then closes it)."""
        region = self._by_id[rid]
        fd, region.fd = region.fd, -1
        return fd

    def ids(self) -> list[str]:
        return list(self._by_id)

    def __contains__(self, rid: object) -> bool:
        return rid in self._by_id

    def locate(self, view: memoryview) -> tuple[str, int, int] | None:
        """``(region, offset, length)`` if ``view`` lies inside a region, else None."""
        if not self._spans or view.nbytes == 0:
            return None
        start = _address(view)
        end = start + view.nbytes
        for lo, hi, rid in self._spans:
            if lo <= start and end <= hi:
                return rid, start - lo, view.nbytes
        return None

    def view(self, rid: str, offset: int, length: int) -> memoryview:
        region = self._by_id.get(rid)
        if region is None:
            raise ValueError(f"unknown shared-memory region {rid!r}")
        if offset < 0 or length < 0 or offset + length > region.size:
            raise ValueError(f"region {rid!r}: span {offset}+{length} is outside it")
        return memoryview(region.mm)[offset : offset + length]

    def collect(self, keep: set[str]) -> list[str]:
        """Forget regions not in ``keep`` (closing their descriptors); returns their ids.

        The mappings stay while objects built on them live (each view holds its ``mmap``).
        """
        gone = [rid for rid in self._by_id if rid not in keep]
        for rid in gone:
            region = self._by_id.pop(rid)
            if region.fd >= 0:
                os.close(region.fd)
        self._spans = [s for s in self._spans if s[2] not in gone]
        return gone

    def close(self) -> None:
        self.collect(set())

    # -- pickling ------------------------------------------------------------------------------
    def dumps(self, obj: Any, *, share: bool = True, pickler: Any = None) -> Packed:
        """Pickle ``obj``: shared buffers by reference, large private ones copied into a region."""
        refs: list[tuple[str, int, int]] = []
        new: list[str] = []

        def callback(buf: pickle.PickleBuffer) -> bool:
            try:
                view = buf.raw()
            except BufferError:
                return True  # not contiguous: in-band
            where = self.locate(view)
            if where is None:
                if not share or view.nbytes < SHARE_MIN_BYTES:
                    return True
                region = self.create(view)
                new.append(region.rid)
                where = (region.rid, 0, view.nbytes)
            refs.append(where)
            return False

        dump = pickler or pickle.dumps
        try:
            data = dump(obj, protocol=5, buffer_callback=callback)
        except BaseException:
            self._drop(new)  # copies made before the pickler failed: nothing refers to them
            raise
        return Packed(data, tuple(refs), tuple(new))

    def place(self, views: tuple[memoryview, ...]) -> tuple[tuple[tuple[str, int, int], ...],
                                                              tuple[str, ...]]:
        """``(refs, new regions)`` for buffers: located in a region, or copied into a new one."""
        refs: list[tuple[str, int, int]] = []
        new: list[str] = []
        for view in views:
            where = self.locate(view) if view.nbytes else None
            if where is None:
                region = self.create(view)
                new.append(region.rid)
                where = (region.rid, 0, view.nbytes)
            refs.append(where)
        return tuple(refs), tuple(new)

    def _drop(self, rids: list[str]) -> None:
        for rid in rids:
            region = self._by_id.pop(rid, None)
            if region is not None and region.fd >= 0:
                os.close(region.fd)
        self._spans = [s for s in self._spans if s[2] not in rids]

    def buffers(self, packed: Packed) -> list[memoryview]:
        return [self.view(rid, off, n) for rid, off, n in packed.refs]

    def fingerprint(self, obj: Any, pickler: Any = None) -> bytes | None:
        """Hash of ``obj``'s pickle with shared buffers named, not read; None if unpicklable."""
        h = hashlib.blake2b(digest_size=16)

        def callback(buf: pickle.PickleBuffer) -> bool:
            try:
                view = buf.raw()
            except BufferError:
                return True
            where = self.locate(view)
            if where is None:
                h.update(view)
            else:
                h.update(repr(where).encode())
            return False

        try:
            h.update((pickler or pickle.dumps)(obj, protocol=5, buffer_callback=callback))
        except Exception:
            return None
        return h.digest()


def sealed_copy(prefix: str, view: memoryview) -> int:
    """A sealed memfd holding a copy of ``view``: the one copy strict mode makes of a buffer."""
    data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    size = data.nbytes
    fd = os.memfd_create(f"cave-{prefix}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        done = 0
        while done < size:
            done += os.pwrite(fd, data[done : done + _CHUNK], done)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd
