"""Which large buffers were written since they were last fingerprinted, as the Linux kernel saw it.

A checkpoint with nothing changed must not read every byte of a 1 GiB DataFrame again: hashing at
memory bandwidth is ~33 ms per GiB, and the kernel already knows which pages were written. This
module asks it, with the page-write tracking that replaced soft-dirty bits (Linux 6.7+):

* ``userfaultfd`` with ``UFFD_FEATURE_WP_ASYNC``: a buffer's pages are registered for
  write-protection; a write to a protected page is resolved by the kernel itself (no handler
  thread) and leaves the page marked *written*;
* ``PAGEMAP_SCAN`` on ``/proc/self/pagemap`` re-protects a range (before it is fingerprinted)
  and later reports whether any page of it was written, or is no longer protected.

A buffer's cached fingerprint is reused only when the object that owns its memory is the same live
object, at the same address and length, and the scan finds every page of the range protected and
unwritten since the protection that preceded the fingerprint. Writes from any thread, from C code
and from the kernel (``readinto``) all count. Not seen, so never relied on where they matter:
memory the kernel zeroes without a write (``MADV_DONTNEED`` on a live buffer) and writes by
devices into pinned memory. Anything else (another OS, an older kernel, file-backed or shared
memory, a forked child) gets ``None`` from `tracker()` or ``False`` from `watch`, and the caller
hashes as before.

Cost: a clean check of 1 GiB is ~0.7 ms; protecting it again ~9 ms; the first write to each
protected 4 KiB page after a checkpoint takes a fault handled in the kernel (rewriting 1 GiB in
place took 0.33-0.35 s against 0.043 s untracked in ``benchmarks/bench_checkpoint.py``).
``CAVE_CHECKPOINT_WRITE_TRACKING=0`` turns tracking off.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from typing import Any

from .._env import WRITE_TRACKING_ENV

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIN_TRACKED = 4 << 20
"""Buffers smaller than this are hashed every time (1 ms per 32 MiB): tracking them would leave
protected pages all over the malloc heap, each costing a fault on its first write."""

_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
_UFFD_USER_MODE_ONLY = 1
_UFFD_API = 0xAA
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
_UFFD_FEATURE_WP_ASYNC = 1 << 15
_UFFDIO_REGISTER_MODE_WP = 1 << 1


def _iowr(kind: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | nr


_UFFDIO_API = _iowr(0xAA, 0x3F, 24)
_UFFDIO_REGISTER = _iowr(0xAA, 0x00, 32)
_UFFDIO_UNREGISTER = (2 << 30) | (16 << 16) | (0xAA << 8) | 0x01  # _IOR(0xAA, 1, uffdio_range)
_PAGEMAP_SCAN = _iowr(ord("f"), 16, 96)
_PAGE_IS_WPALLOWED = 1 << 0
_PAGE_IS_WRITTEN = 1 << 1
_PM_SCAN_WP_MATCHING = 1 << 0
_PM_SCAN_CHECK_WPASYNC = 1 << 1


class _Region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("cat", ctypes.c_uint64)]


class WriteTracker:
    """One userfaultfd and one pagemap descriptor for this process (see the module docstring)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        self._pid = os.getpid()
        self._lock = threading.Lock()
        number = _SYS_USERFAULTFD[platform.machine()]
        # User-mode-only works without privilege (vm.unprivileged_userfaultfd=0); async
        # write-protect faults are resolved by the kernel whichever mode the write came from.
        fd = self._libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK | _UFFD_USER_MODE_ONLY)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "userfaultfd")
        self._uffd = int(fd)
        try:
            features = _UFFD_FEATURE_WP_ASYNC | _UFFD_FEATURE_WP_UNPOPULATED
            api = (ctypes.c_uint64 * 3)(_UFFD_API, features, 0)
            self._ioctl(self._uffd, _UFFDIO_API, api)
            self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(self._uffd)
            raise

    def _ioctl(self, fd: int, request: int, arg: Any) -> int:
        result = int(self._libc.ioctl(fd, request, ctypes.addressof(arg)))
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return result

    def _pages(self, address: int, length: int) -> tuple[int, int] | None:
        """The whole pages to track, or None (no whole page, or we are a forked child)."""
        start, end = inner_pages(address, length)
        if end <= start or os.getpid() != self._pid:
            return None
        return start, end

    def _scan(self, start: int, end: int, flags: int, *, find_untracked: bool) -> int:
        vec = (_Region * 1)()
        if find_untracked:  # a page that was written OR is not protected
            inverted, mask, anyof, max_pages = _PAGE_IS_WPALLOWED, 0, (
                _PAGE_IS_WPALLOWED | _PAGE_IS_WRITTEN
            ), 1
        else:  # every written page: the ones to protect again
            inverted, mask, anyof, max_pages = 0, _PAGE_IS_WRITTEN, 0, 0
        arg = (ctypes.c_uint64 * 12)(
            96, flags, start, end, 0, ctypes.addressof(vec), 1, max_pages,
            inverted, mask, anyof, _PAGE_IS_WRITTEN,
        )  # fmt: skip
        return self._ioctl(self._pagemap, _PAGEMAP_SCAN, arg)

    def watch(self, address: int, length: int) -> bool:
        """Protect the whole pages of ``[address, address + length)`` so that later writes show;
        False if the kernel cannot track this memory (file-backed, shared, a forked child)."""
        pages = self._pages(address, length)
        if pages is None or not _private_anonymous(*pages):
            return False
        start, end = pages
        with self._lock:
            try:
                reg = (ctypes.c_uint64 * 4)(start, end - start, _UFFDIO_REGISTER_MODE_WP, 0)
                self._ioctl(self._uffd, _UFFDIO_REGISTER, reg)
                flags = _PM_SCAN_WP_MATCHING | _PM_SCAN_CHECK_WPASYNC
                self._scan(start, end, flags, find_untracked=False)
            except OSError:
                return False
        return True

    def unwatch(self, address: int, length: int) -> None:
        """Stop tracking the range: its pages take no more faults (and may become huge pages
        again)."""
        pages = self._pages(address, length)
        if pages is None:
            return
        start, end = pages
        with self._lock:
            try:
                span = (ctypes.c_uint64 * 2)(start, end - start)
                self._ioctl(self._uffd, _UFFDIO_UNREGISTER, span)
            except OSError:
                pass

    def untouched(self, address: int, length: int) -> bool:
        """True if no whole page of the range was written, and all stayed protected, since
        `watch` (the partial pages at its ends are the caller's to compare)."""
        pages = self._pages(address, length)
        if pages is None:
            return False
        start, end = pages
        with self._lock:
            try:
                return self._scan(start, end, 0, find_untracked=True) == 0
            except OSError:
                return False


def inner_pages(address: int, length: int) -> tuple[int, int]:
    """The whole pages inside ``[address, address + length)``: the part the kernel tracks.

    The partial pages at either end are shared with neighbouring allocations (malloc writes its
    chunk headers there all the time), so tracking them would report writes that are not the
    buffer's; callers compare those few edge bytes themselves.
    """
    return (address + PAGE - 1) & ~(PAGE - 1), (address + length) & ~(PAGE - 1)


def _private_anonymous(start: int, end: int) -> bool:
    """Whether private anonymous mappings cover the range. Shared memory can be written by another
    process through its own page tables, and a file behind a private mapping can change under pages
    not yet copied: neither shows as a write in ours."""
    with open("/proc/self/maps", "rb") as f:
        maps = f.read().decode("ascii", "replace")
    covered = start
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if hi <= covered:
            continue
        if lo > covered or covered >= end:
            break
        path = fields[5] if len(fields) > 5 else ""
        if fields[1][3] != "p" or (path and not path.startswith(("[heap]", "[anon:"))):
            return False
        covered = hi
    return covered >= end


_tracker: WriteTracker | None = None
_tried = False
unavailable = ""
"""Why `tracker()` returned None (the kernel's refusal, or the environment switch), if it did."""
_tracker_lock = threading.Lock()


def tracker() -> WriteTracker | None:
    """This process's tracker, or None where page-write tracking is unavailable or turned off."""
    global _tracker, _tried, unavailable
    with _tracker_lock:
        if _tracker is not None and _tracker._pid != os.getpid():
            _tracker, _tried = None, False  # a forked child: its own descriptors, if ever needed
        if not _tried:
            _tried = True
            _tracker, unavailable = None, ""
            if os.environ.get(WRITE_TRACKING_ENV, "1") == "0":
                unavailable = f"{WRITE_TRACKING_ENV}=0"
            else:
                try:
                    _tracker = WriteTracker()
                except KeyError:
                    unavailable = f"no userfaultfd syscall number for {platform.machine()}"
                except (OSError, AttributeError) as exc:
                    unavailable = f"{type(exc).__name__}: {exc}"
        return _tracker
