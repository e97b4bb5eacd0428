"""Restore buffers are private memory: a forked child cannot change what the parent verified."""

from __future__ import annotations

import os

from cave.checkpoint import _blobio


def test_large_restore_buffer_is_not_shared_with_forked_children() -> None:
    length = 2 * _blobio.BLOCK  # the smallest size that gets an mmap, not a bytearray
    buf = _blobio.allocate(length)
    buf[:4] = b"good"
    buf[-4:] = b"tail"
    pid = os.fork()
    if pid == 0:  # child: scribble over the buffer, then leave without running any cleanup
        buf[:4] = b"evil"
        buf[-4:] = b"EVIL"
        os._exit(0)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert bytes(buf[:4]) == b"good" and bytes(buf[-4:]) == b"tail"
