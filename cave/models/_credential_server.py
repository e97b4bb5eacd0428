"""The credential-holding process: a loopback HTTP forwarder that adds the provider key.

Run by ``_credential_proxy`` as ``python -I -S <this file>`` (standard library only, so it starts in
a few milliseconds and imports nothing of Cave's). It inherits exactly three descriptors: stdin,
the control pipe from the kernel (JSON lines); the descriptor named by ``argv[1]``, a listening
unix socket in a private 0700
directory; and stdout/stderr on ``/dev/null``. Its environment holds no keys.

Control lines: ``{"op": "token", "token": T}`` once, then ``{"op": "route", "id": R,
"upstream": URL, "header": "x-api-key" | "authorization", "value": KEY}`` for each key. A route
is bound to its upstream when the key arrives and cannot be re-pointed: a later line for the same
id replaces key *and* upstream together, so nobody who does not know the key can send it
elsewhere. EOF on stdin (the kernel ended, however it ended) ends this process.

A request ``METHOD /r/<id>/<path>`` carrying the token as ``x-api-key`` or ``Authorization:
Bearer`` is sent to ``<upstream>/<path>`` with the token replaced by the key. The response goes
back as it arrives (``read1``: server-sent events are not buffered), with its status, headers and
body unchanged, so the SDK's retries (429, 5xx) and error messages work as without the proxy.
If the upstream cannot be reached, or breaks mid-response, the client's connection is reset, so
the SDK sees a connection error just as it would have. Upstream connections are kept alive and
reused; an idle one the server has closed is dropped before use (it reads as ready), as
urllib3's pool does. Nothing is ever re-sent by this process: retrying is the SDK's job.

The process makes itself undumpable (``PR_SET_DUMPABLE`` 0: no ``ptrace`` or
``/proc/<pid>/mem``/``environ`` for processes of the same user) and dies with its parent
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
from typing import Any

_routes: dict[str, tuple[str, str, str]] = {}
"""route id -> (upstream base URL, header name, header value)."""
_token: list[str] = []
_lock = threading.Lock()


def _harden() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _control() -> None:
    """Read control lines until EOF, then end the process."""
    for raw in sys.stdin.buffer:
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        with _lock:
            if msg.get("op") == "token" and not _token:
                _token.append(str(msg["token"]))
            elif msg.get("op") == "route":
                header = str(msg["header"]).lower()
                value = str(msg["value"])
                if header == "authorization":
                    value = "Bearer " + value
                _routes[str(msg["id"])] = (str(msg["upstream"]).rstrip("/"), header, value)
        del raw, msg
    os._exit(0)


_started: list[bool] = []


def _start() -> None:
    """Harden, take control lines, then wait for the first client before importing the HTTP
    machinery (``http.client``/``http.server`` pull in ``email``, ``ssl``, ``hmac``: ~3x the
    interpreter's own start-up). The kernel starts this process at its own start, on the same
    CPUs, and needs nothing from it until the first model request."""
    _harden()
    threading.Thread(target=_control, name="control", daemon=True).start()
    _started.append(True)
    listener = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    select.select([listener], [], [])


if __name__ == "__main__":
    _start()

import hmac  # noqa: E402 - after the first client arrives (see _start)
import http.client  # noqa: E402
import socket  # noqa: E402
import socketserver  # noqa: E402
import ssl  # noqa: E402
import struct  # noqa: E402
import urllib.parse  # noqa: E402
from http.server import BaseHTTPRequestHandler  # noqa: E402

_ssl_context: list[ssl.SSLContext] = []


_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "x-api-key",
        "authorization",
    }
)
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cave-credentials"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def address_string(self) -> str:
        return "local"

    def do_GET(self) -> None:  # noqa: N802
        self._forward()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET  # noqa: N815

    def _reject(self, status: int, kind: str, message: str) -> None:
        body = json.dumps(
            {"type": "error", "error": {"type": kind, "message": f"cave credentials: {message}"}}
        ).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes | None:
        length = self.headers.get("content-length")
        if length is not None:
            return self.rfile.read(int(length))
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        return None

    def _forward(self) -> None:
        body = self._body()
        parts = self.path.split("/", 3)  # "", "r", id, rest
        with _lock:
            token = _token[0] if _token else None
            route = _routes.get(parts[2]) if len(parts) >= 3 and parts[1] == "r" else None
        given = self.headers.get("x-api-key") or ""
        bearer = self.headers.get("authorization") or ""
        if not given and bearer.startswith("Bearer "):
            given = bearer[7:]
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            self._reject(401, "authentication_error", "wrong or missing proxy token")
            return
        if route is None:
            self._reject(404, "not_found_error", f"no key for route {self.path.split('?')[0]!r}")
            return
        upstream, header, value = route
        rest = parts[3] if len(parts) > 3 else ""
        target = urllib.parse.urlsplit(upstream + "/" + rest)
        path = (target.path or "/") + ("?" + target.query if target.query else "")
        conn = _take(target)
        try:
            conn.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("host", target.netloc)
            for name, val in self.headers.items():
                if name.lower() not in _HOP:
                    conn.putheader(name, val)
            conn.putheader(header, value)
            if body is not None:
                conn.putheader("content-length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException):
            conn.close()
            self._reset()
            return
        try:
            self._relay(response)
        except (OSError, http.client.HTTPException):
            conn.close()
            self._reset()
            return
        response.close()  # read to the end; marks the connection free for the next request
        if response.will_close:
            conn.close()
        else:
            _give(target, conn)

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        for name, val in response.getheaders():
            if name.lower() not in _HOP:
                self.send_header(name, val)
        length = response.getheader("content-length")
        chunked = response.chunked or length is None
        if self.command == "HEAD" or response.status in (204, 304):
            chunked = False
            self.send_header("content-length", length or "0")
            self.end_headers()
            return
        if chunked:
            self.send_header("transfer-encoding", "chunked")
        else:
            self.send_header("content-length", str(length))
        self.end_headers()
        while True:
            data = response.read1(65536)
            if not data:
                break
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        if not chunked and response.length:  # the upstream ended early: do not pass it as whole
            raise http.client.IncompleteRead(b"")

    def _reset(self) -> None:
        """Abort the client's connection (RST), as a broken upstream would have."""
        self.close_connection = True
        try:
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.connection.close()
        except OSError:
            pass


_pool: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
"""Idle upstream connections kept alive, per (scheme, host:port), as the SDK's own pool would."""


def _take(target: urllib.parse.SplitResult) -> http.client.HTTPConnection:
    """An idle kept-alive connection the server has not closed, else a new one."""
    while True:
        with _lock:
            idle = _pool.get((target.scheme, target.netloc))
            conn = idle.pop() if idle else None
        if conn is None:
            return _connect(target)
        sock = conn.sock
        if sock is not None and not select.select([sock], [], [], 0)[0]:
            return conn  # nothing to read: still open (readable would mean EOF or junk)
        conn.close()


def _give(target: urllib.parse.SplitResult, conn: http.client.HTTPConnection) -> None:
    with _lock:
        idle = _pool.setdefault((target.scheme, target.netloc), [])
        if len(idle) < 8:
            idle.append(conn)
            return
    conn.close()


def _connect(target: urllib.parse.SplitResult) -> http.client.HTTPConnection:
    host = target.hostname or ""
    if target.scheme == "https":
        if not _ssl_context:
            _ssl_context.append(ssl.create_default_context())
        return http.client.HTTPSConnection(
            host, target.port or 443, timeout=900, context=_ssl_context[0]
        )
    return http.client.HTTPConnection(host, target.port or 80, timeout=900)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> None:
    if not _started:
        _harden()
        threading.Thread(target=_control, name="control", daemon=True).start()
    server = _Server.__new__(_Server)
    socketserver.BaseServer.__init__(server, "", _Handler)
    server.socket = socket.socket(fileno=int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    server.serve_forever()


if __name__ == "__main__":
    main()
