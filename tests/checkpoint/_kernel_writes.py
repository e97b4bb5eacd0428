"""Writes the page tables never see, made for real through the kernel (io_uring, perf mmap).

Test helpers for the write-tracking routes of issue 9; plain ctypes syscalls, no liburing.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import time

_NR = {
    "x86_64": {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
               "perf_event_open": 298},
    "aarch64": {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
                "perf_event_open": 241},
}  # fmt: skip
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _sys(name: str, *args: int | ctypes._Pointer | ctypes.Array | None) -> int:
    result = int(_libc.syscall(_NR[platform.machine()][name], *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return result


class _Params(ctypes.Structure):
    _fields_ = [
        ("sq_entries", ctypes.c_uint32), ("cq_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32), ("sq_thread_cpu", ctypes.c_uint32),
        ("sq_thread_idle", ctypes.c_uint32), ("features", ctypes.c_uint32),
        ("wq_fd", ctypes.c_uint32), ("resv", ctypes.c_uint32 * 3),
        ("sq_off", ctypes.c_uint32 * 10), ("cq_off", ctypes.c_uint32 * 10),
    ]  # fmt: skip


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Sqe(ctypes.Structure):
    _fields_ = [
        ("opcode", ctypes.c_uint8), ("flags", ctypes.c_uint8), ("ioprio", ctypes.c_uint16),
        ("fd", ctypes.c_int32), ("off", ctypes.c_uint64), ("addr", ctypes.c_uint64),
        ("len", ctypes.c_uint32), ("rw_flags", ctypes.c_uint32), ("user_data", ctypes.c_uint64),
        ("buf_index", ctypes.c_uint16), ("pad", ctypes.c_uint8 * 22),
    ]  # fmt: skip


_IORING_OP_READ_FIXED = 4
_IORING_REGISTER_BUFFERS = 0
_IORING_ENTER_GETEVENTS = 1
_IORING_OFF_SQ_RING = 0
_IORING_OFF_CQ_RING = 0x8000000
_IORING_OFF_SQES = 0x10000000


class FixedBufferRing:
    """An io_uring with one registered (pinned) buffer: `read` fills it from a file with
    ``IORING_OP_READ_FIXED``, which copies through the kernel's own mapping of the pinned pages."""

    def __init__(self, address: int, length: int) -> None:
        params = _Params()
        self.fd = _sys("io_uring_setup", 4, ctypes.byref(params))
        sq_off, cq_off = params.sq_off, params.cq_off
        sq_size = sq_off[6] + params.sq_entries * 4
        cq_size = cq_off[5] + params.cq_entries * 16
        self._sq = mmap.mmap(self.fd, sq_size, offset=_IORING_OFF_SQ_RING)
        self._cq = mmap.mmap(self.fd, cq_size, offset=_IORING_OFF_CQ_RING)
        self._sqes = mmap.mmap(self.fd, params.sq_entries * 64, offset=_IORING_OFF_SQES)
        self._sq_off, self._cq_off = list(sq_off), list(cq_off)
        self.address, self.length = address, length
        iov = _Iovec(address, length)
        _sys("io_uring_register", self.fd, _IORING_REGISTER_BUFFERS, ctypes.byref(iov), 1)

    def _u32(self, ring: mmap.mmap, offset: int) -> ctypes.c_uint32:
        return ctypes.c_uint32.from_buffer(ring, offset)

    def read(self, fd: int, length: int, offset_in_buffer: int = 0) -> int:
        """Read ``length`` bytes of ``fd`` (from its start) into the registered buffer."""
        tail = self._u32(self._sq, self._sq_off[1])
        mask = self._u32(self._sq, self._sq_off[2]).value
        index = tail.value & mask
        sqe = _Sqe.from_buffer(self._sqes, index * 64)
        ctypes.memset(ctypes.addressof(sqe), 0, 64)
        sqe.opcode, sqe.fd, sqe.off = _IORING_OP_READ_FIXED, fd, 0
        sqe.addr, sqe.len, sqe.buf_index = self.address + offset_in_buffer, length, 0
        self._u32(self._sq, self._sq_off[6] + 4 * index).value = index
        tail.value += 1
        del sqe, tail
        _sys("io_uring_enter", self.fd, 1, 1, _IORING_ENTER_GETEVENTS, None, 0)
        head = self._u32(self._cq, self._cq_off[0])
        cq_mask = self._u32(self._cq, self._cq_off[2]).value
        cqe = self._cq_off[5] + 16 * (head.value & cq_mask)
        res = ctypes.c_int32.from_buffer(self._cq, cqe + 8)  # struct io_uring_cqe.res
        result = res.value
        head.value += 1
        del head, res
        if result < 0:
            raise OSError(-result, f"IORING_OP_READ_FIXED: {os.strerror(-result)}")
        return result

    def close(self) -> None:
        """Tear the ring down and wait until the kernel has unpinned the buffer: it frees a ring
        in a worker after the last reference goes, and until then ``VmPin`` stays above 0 (and
        write tracking trusts nothing in this process)."""
        for ring in (self._sq, self._cq, self._sqes):
            ring.close()
        os.close(self.fd)
        for _ in range(3000):  # polls a condition, bounded (30 s): not a timing assumption
            if _vm_pin_kb() == 0:
                return
            time.sleep(0.01)
        raise AssertionError(f"the io_uring's pinned pages were not released ({_vm_pin_kb()} kB)")


def _vm_pin_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPin:"):
                return int(line.split()[1])
    return 0


class _PerfAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
        ("rest", ctypes.c_uint8 * 80),
    ]  # fmt: skip


_PERF_TYPE_SOFTWARE = 1
_PERF_COUNT_SW_DUMMY = 9
_DISABLED = 1 << 0
_EXCLUDE_KERNEL = 1 << 5
_EXCLUDE_HV = 1 << 6


def perf_page_over(address: int, page: int) -> None:
    """Map a perf event's control page (a ``VM_PFNMAP`` mapping) with ``MAP_FIXED`` at
    ``address``, replacing the page that was there; `anonymous_page_over` puts one back."""
    attr = _PerfAttr()
    attr.type, attr.size, attr.config = _PERF_TYPE_SOFTWARE, 128, _PERF_COUNT_SW_DUMMY
    attr.flags = _DISABLED | _EXCLUDE_KERNEL | _EXCLUDE_HV  # never scheduled: the page holds still
    fd = _sys("perf_event_open", ctypes.byref(attr), 0, -1, -1, 0)
    try:
        got = _libc.mmap(address, page, mmap.PROT_READ, mmap.MAP_SHARED | 0x10, fd, 0)
        if got != address:
            raise OSError(ctypes.get_errno(), "mmap(MAP_FIXED) of the perf event failed")
    finally:
        os.close(fd)  # the mapping keeps the event alive


def anonymous_page_over(address: int, page: int) -> None:
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    got = _libc.mmap(address, page, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x10, -1, 0)
    if got != address:
        raise OSError(ctypes.get_errno(), "mmap(MAP_FIXED) of an anonymous page failed")


def reprotect_behind_the_trackers_back(address: int, length: int) -> None:
    """Re-protect the written pages of a range with a ``PAGEMAP_SCAN`` of our own: the write
    evidence the tracker relies on is erased without it knowing (what its invariant trusts no
    other code in the process to do)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    start = (address + mmap.PAGESIZE - 1) & ~(mmap.PAGESIZE - 1)
    end = (address + length) & ~(mmap.PAGESIZE - 1)
    request = (3 << 30) | (96 << 16) | (ord("f") << 8) | 16  # PAGEMAP_SCAN
    written, wp_matching = 1 << 1, 1 << 0
    arg = (ctypes.c_uint64 * 12)(96, wp_matching, start, end, 0, 0, 0, 0, 0, written, 0, written)
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        if libc.ioctl(fd, request, ctypes.addressof(arg)) < 0:
            raise OSError(ctypes.get_errno(), "PAGEMAP_SCAN")
    finally:
        os.close(fd)


def reset_tracker() -> None:
    """Close this process's write tracker and forget every cached digest: the next save starts
    a new tracker. Closing matters: ranges stay registered with a live tracker's userfaultfd,
    and a second tracker could not register them (EBUSY), so it would track nothing."""
    from cave.checkpoint import _fingerprint, _write_tracking

    with _write_tracking._tracker_lock:
        old = _write_tracking._tracker
        _write_tracking._tracker, _write_tracking._tried = None, False
        _write_tracking.unavailable = ""
    if old is not None:
        old.close()
    with _fingerprint._known_lock:
        _fingerprint._known.clear()
