"""The broker channel: length-prefixed messages over one AF_UNIX stream socket, with descriptors.

A message is a pickled dict plus zero or more file descriptors passed with ``SCM_RIGHTS``. The
header (payload length, descriptor count) travels in the same ``sendmsg`` as the descriptors, so the
receiver gets them with the first byte of the message. The receiver chooses how to unpickle: the
kernel reads what the confined worker sends with the restricted loader (``_unpickle``), never with
plain ``pickle.loads`` (that would let the worker run code in the kernel).

Received descriptors are close-on-exec (``MSG_CMSG_CLOEXEC``); a truncated set (``MSG_CTRUNC``) is
closed and reported, never half-used.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Channel", "ChannelClosed"]

_HEADER = struct.Struct("!QI")
MAX_FDS = 64
"""Descriptors one message may carry (more is a protocol error)."""
MAX_MESSAGE = 8 * 2**30
"""Bytes one message may have (a larger header is a protocol error, not an allocation)."""


class ChannelClosed(EOFError):
    """The other end went away (the worker died, or the kernel closed the channel)."""


class Channel:
    """One end of the broker channel."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        """Send ``message`` (pickled, protocol 5, in-band) and ``fds`` (duplicated to the peer)."""
        data = pickle.dumps(message, protocol=5)
        self.send_raw(data, fds)

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        if len(fds) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} descriptors per message, not {len(fds)}")
        header = _HEADER.pack(len(data), len(fds))
        try:
            if fds:
                socket.send_fds(self.sock, [header], list(fds))
            else:
                self.sock.sendall(header)
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed(str(exc)) from None

    def recv(
        self, loads: Callable[[bytes], Any] = pickle.loads
    ) -> tuple[dict[str, Any], list[int]]:
        """The next message and its descriptors (the caller owns and must close them)."""
        data, fds = self.recv_raw()
        try:
            message = loads(data)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        if not isinstance(message, dict):
            for fd in fds:
                os.close(fd)
            raise ValueError(f"protocol error: a message must be a dict, not {type(message)}")
        return message, fds

    def recv_raw(self) -> tuple[bytes, list[int]]:
        fds: list[int] = []
        try:
            head = b""
            while len(head) < _HEADER.size:
                chunk, anc, flags, _ = self.sock.recvmsg(
                    _HEADER.size - len(head),
                    socket.CMSG_SPACE(MAX_FDS * 4),
                    socket.MSG_CMSG_CLOEXEC,
                )
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(payload) - len(payload) % 4
                        fds += list(struct.unpack(f"{usable // 4}i", payload[:usable]))
                if flags & socket.MSG_CTRUNC:
                    raise ValueError("protocol error: descriptors were truncated")
                if not chunk:
                    raise ChannelClosed("the other end closed the channel")
                head += chunk
            size, nfds = _HEADER.unpack(head)
            if size > MAX_MESSAGE:
                raise ValueError(f"protocol error: a {size}-byte message announced")
            if nfds != len(fds):
                raise ValueError(f"protocol error: {nfds} descriptors announced, {len(fds)} came")
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            while got < size:
                n = self.sock.recv_into(view[got:], size - got)
                if n == 0:
                    raise ChannelClosed("the other end closed the channel mid-message")
                got += n
            return bytes(buf), fds
        except BaseException:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def pair() -> tuple[Channel, socket.socket]:
    """A channel for the kernel and the socket the worker inherits (inheritable, blocking)."""
    kernel_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    kernel_end.set_inheritable(False)
    worker_end.set_inheritable(True)
    return Channel(kernel_end), worker_end
