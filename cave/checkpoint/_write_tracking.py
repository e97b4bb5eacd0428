"""Which large buffers were written since they were last fingerprinted, as the Linux kernel saw it.

A checkpoint with nothing changed must not read every byte of a 1 GiB DataFrame again: hashing at
memory bandwidth is ~33 ms per GiB, and the kernel already knows which pages were written. This
module asks it, with the page-write tracking that replaced soft-dirty bits (Linux 6.7+):

* ``userfaultfd`` with ``UFFD_FEATURE_WP_ASYNC``: a buffer's pages are registered for
  write-protection; a write to a protected page is resolved by the kernel itself (no handler
  thread) and leaves the page marked *written*;
* ``PAGEMAP_SCAN`` on ``/proc/self/pagemap`` re-protects a range (before it is fingerprinted)
  and later reports whether any page of it was written, or is no longer protected.

`WriteTracker.watch` returns a `Watch`: evidence that every whole page of a range was protected
and unwritten at the moment it was issued. The caller hashes the buffer after that moment and may
reuse the digest while `WriteTracker.untouched` says yes.

**The invariant** (what a "yes" rests on; anything that cannot be shown to hold means "no", and
the caller hashes):

1. When a `Watch` is issued, every page of its range is protected and unwritten: either the scan
   that re-protected the range covered all of it (``walk_end == end``), or a scan found it so.
2. A page stays *written* from the CPU's first write after its protection until this tracker
   re-protects or unregisters it. Every re-protection and every unregistration happens here,
   under one lock, and first revokes every live `Watch` whose range overlaps the pages it
   touches, whatever order the buffers are fingerprinted in. So a `Watch` is never vouched for
   by a protection newer than itself.
3. `untouched` says yes only if the `Watch` is valid and a ``PAGEMAP_SCAN`` with
   ``PM_SCAN_CHECK_WPASYNC`` (a mapping not registered with us, such as a ``MAP_FIXED``
   ``VM_PFNMAP`` mapping over the range, fails the scan instead of being skipped) found no page
   of the range written or unprotected, the scan covered the whole range, no part of the range
   is unmapped (``msync`` fails on a hole), and the process is the one that registered it.
4. Pinned pages are written by the kernel and devices through their own mappings, without a fault
   (``IORING_OP_READ_FIXED`` into an io_uring registered buffer, RDMA, vfio). The kernel does not
   say which pages are pinned, so the rule is per process: while the process has pinned or
   locked memory (``VmPin``/``VmLck`` in ``/proc/self/status``) or an open io_uring instance,
   nothing is watched and nothing is vouched for. A pin taken after a `Watch` faults the pages
   for write (``FOLL_WRITE``), which marks them written.

Checked here: 1 (``walk_end``), 2 (revocation under the lock, tested by mutation in
``tests/checkpoint/test_checkpoint_tracking_fuzz.py``), 3 and 4 at every call. Trusted, not
checked: that no other code in this process re-protects pages with its own ``PAGEMAP_SCAN``, and
that pinners account their pins in ``VmPin``/``VmLck`` (AF_XDP umem and some drivers do not).
Not reliably seen: memory the kernel replaces without a write (``MADV_DONTNEED``/``MADV_FREE`` on
a live buffer reads back zeros; a zapped page may keep its protection marker). `_fingerprint`
re-hashes one trusted buffer in full after saves to catch what this list misses, and turns
tracking off (`disable`) on a mismatch.

Anything else (another OS, an older kernel, file-backed or shared memory, a forked child) gets
``None`` from `tracker()` or from `watch`, and the caller hashes as before.

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
import weakref
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
_MS_ASYNC = 1


class _Region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("cat", ctypes.c_uint64)]


class Watch:
    """Evidence that the whole pages of ``[start, end)`` were protected and unwritten when it was
    issued; `WriteTracker` revokes it when it re-protects or releases any page of the range."""

    __slots__ = ("start", "end", "valid", "__weakref__")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end, self.valid = start, end, True

    def __repr__(self) -> str:
        state = "valid" if self.valid else "revoked"
        return f"<Watch {self.start:#x}-{self.end:#x} {state}>"


class WriteTracker:
    """One userfaultfd and one pagemap descriptor for this process (see the module docstring)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        self._libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._live: weakref.WeakSet[Watch] = weakref.WeakSet()
        self._closed = False
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
        if end <= start or os.getpid() != self._pid or self._closed:
            return None
        return start, end

    def _scan(self, start: int, end: int, *, protect: bool) -> int:
        """``protect``: re-protect every written page of the range, checking that the walk
        covered all of it. Otherwise: how many pages (0 or 1, it stops at the first) are written
        or unprotected; an unregistered mapping in the range fails with EPERM."""
        if protect:
            vec, vec_len = None, 0  # no output wanted: the walk never stops early
            inverted, mask, anyof, max_pages = 0, _PAGE_IS_WRITTEN, 0, 0
            flags = _PM_SCAN_WP_MATCHING | _PM_SCAN_CHECK_WPASYNC
        else:
            vec, vec_len = (_Region * 1)(), 1
            inverted, anyof, mask, max_pages = _PAGE_IS_WPALLOWED, 0, 0, 1
            anyof = _PAGE_IS_WPALLOWED | _PAGE_IS_WRITTEN  # written OR not protected
            flags = _PM_SCAN_CHECK_WPASYNC
        arg = (ctypes.c_uint64 * 12)(
            96, flags, start, end, 0, ctypes.addressof(vec) if vec is not None else 0, vec_len,
            max_pages, inverted, mask, anyof, _PAGE_IS_WRITTEN,
        )  # fmt: skip
        found = self._ioctl(self._pagemap, _PAGEMAP_SCAN, arg)
        if found == 0 and arg[4] != end:
            raise OSError(0, f"PAGEMAP_SCAN stopped at {arg[4]:#x}, before {end:#x}")
        return found

    def _clean(self, start: int, end: int) -> bool:
        """Every page of the range protected and unwritten, and none of it unmapped."""
        if self._libc.msync(start, end - start, _MS_ASYNC) != 0:
            return False  # ENOMEM: a hole in the range (pagemap walks skip holes silently)
        return self._scan(start, end, protect=False) == 0

    def _revoke(self, start: int, end: int) -> None:
        """Revoke every live `Watch` overlapping ``[start, end)`` (invariant 2); under the lock."""
        for watch in list(self._live):
            if watch.start < end and start < watch.end:
                watch.valid = False
                self._live.discard(watch)

    def watch(self, address: int, length: int) -> Watch | None:
        """Protect the whole pages of ``[address, address + length)`` so that later writes show;
        None if the kernel cannot track this memory (file-backed, shared, a forked child,
        pinned memory in the process)."""
        pages = self._pages(address, length)
        if pages is None or pinned() or not _private_anonymous(*pages):
            return None
        start, end = pages
        with self._lock:
            if self._closed:
                return None
            try:
                reg = (ctypes.c_uint64 * 4)(start, end - start, _UFFDIO_REGISTER_MODE_WP, 0)
                self._ioctl(self._uffd, _UFFDIO_REGISTER, reg)
                if not self._clean(start, end):  # already clean: nothing to re-protect
                    self._revoke(start, end)
                    self._scan(start, end, protect=True)
                if pinned():  # pinned since the check above: the protection proves nothing
                    raise OSError(0, "memory was pinned while the range was being protected")
            except Exception:
                self._revoke(start, end)  # a re-protection may have run part of the way
                return None
            issued = Watch(start, end)
            self._live.add(issued)
            return issued

    def unwatch(self, watch: Watch) -> None:
        """Stop tracking the watch's range: its pages take no more faults (and may become huge
        pages again). Every watch overlapping it is revoked: its pages are no longer protected."""
        with self._lock:
            self._revoke(watch.start, watch.end)
            watch.valid = False
            if self._closed or os.getpid() != self._pid:
                return
            try:
                span = (ctypes.c_uint64 * 2)(watch.start, watch.end - watch.start)
                self._ioctl(self._uffd, _UFFDIO_UNREGISTER, span)
            except OSError:
                pass

    def clean(self, address: int, length: int) -> bool:
        """Whether every whole page of the range is protected and unwritten now (no `Watch`
        needed: this says nothing about when they were protected)."""
        pages = self._pages(address, length)
        if pages is None:
            return False
        with self._lock:
            try:
                return not self._closed and self._clean(*pages)
            except Exception:
                return False

    def untouched(self, watch: Watch) -> bool:
        """True if no whole page of the watch's range was written since it was issued (the
        partial pages at the buffer's ends are the caller's to compare); see the invariant."""
        if not watch.valid or os.getpid() != self._pid or pinned():
            return False
        with self._lock:
            try:
                return watch.valid and not self._closed and self._clean(watch.start, watch.end)
            except Exception:
                return False

    def close(self) -> None:
        """Revoke every watch and release the descriptors (the kernel unregisters the ranges)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for watch in list(self._live):
                watch.valid = False
            self._live = weakref.WeakSet()
            if os.getpid() == self._pid:
                os.close(self._uffd)
                os.close(self._pagemap)


def pinned() -> str:
    """Why pages of this process may be written without a fault (invariant 4), or ''."""
    try:
        with open("/proc/self/status", "rb") as f:
            status = f.read()
        for line in status.splitlines():
            if line.startswith((b"VmPin:", b"VmLck:")) and int(line.split()[1]) != 0:
                return f"the process has pinned or locked memory ({line.decode().split()[0]} > 0)"
        for fd in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # closed since the listing (or the listing's own descriptor)
            if link == "anon_inode:[io_uring]":
                return "the process has an io_uring instance (its buffers may be pinned)"
    except Exception as exc:  # cannot tell: assume the worst
        return f"cannot read /proc/self ({exc})"
    return ""


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


def disable(reason: str) -> None:
    """Turn tracking off for the rest of this process (every buffer is hashed from now on):
    `tracker()` returns None and `unavailable` says ``reason``. Used when a verification finds
    a digest the tracker vouched for that no longer matches the bytes."""
    global _tracker, _tried, unavailable
    with _tracker_lock:
        old, _tracker, _tried, unavailable = _tracker, None, True, reason
    if old is not None:
        old.close()
