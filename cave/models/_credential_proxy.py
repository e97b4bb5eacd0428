"""The kernel's side of the credential-holding process (``_credential_server``).

``CredentialProxy()`` binds a unix socket in a fresh 0700 directory, starts the server
with that socket as its only extra descriptor (its own process group, an environment without
keys, stdout/stderr on ``/dev/null``) and sends it a random per-kernel token. ``add_key`` hands a
key over the control pipe, bound to one upstream URL, and keeps only the route id: the kernel's
memory then holds the token, which makes model calls through the proxy possible, but not the key.
Model clients ask ``route(provider, upstream)`` and talk HTTP over the socket
(``httpx.HTTPTransport(uds=...)``) with the token where the key would go.

The server exits when the control pipe closes (the kernel ended, even by ``kill -9``), and is
killed with its group by ``close()`` and at interpreter exit.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CredentialProxy", "Route", "ROUTE_HOST"]

ROUTE_HOST = "http://cave-credentials"
"""The host part of the base URL SDK clients get (the transport ignores it: unix socket)."""
_SERVER = Path(__file__).with_name("_credential_server.py")
_JSON_SAFE = re.compile(rb'[\x21\x23-\x5b\x5d-\x7e]+')


@dataclass(frozen=True)
class Route:
    """How a model client reaches one key: base URL, unix socket, token, header kind."""

    base_url: str
    uds: str
    token: str
    header: str
    """``x-api-key`` or ``authorization`` (the token goes where the key would)."""

    def __repr__(self) -> str:
        return f"Route({self.base_url!r}, header={self.header!r})"


class CredentialProxy:
    """One credential-holding process per kernel."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="cave-credentials-")
        os.chmod(self._dir, 0o700)
        self.uds = os.path.join(self._dir, "proxy.sock")
        self._token = secrets.token_urlsafe(32)
        self._routes: dict[tuple[str, str], tuple[str, str]] = {}
        """(provider, upstream) -> (route id, header)."""
        self._lock = threading.Lock()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.uds)
            os.chmod(self.uds, 0o600)
            listener.listen(64)
            self._proc = subprocess.Popen(
                [*_server_argv(), str(listener.fileno())],
                stdin=subprocess.PIPE,
                bufsize=0,  # no buffer in this process keeps a copy of a line
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(listener.fileno(),),
                env=_server_env(),
                start_new_session=True,  # its own process group
                cwd=self._dir,
            )
        finally:
            listener.close()  # only the server holds it now
        self.pid = self._proc.pid
        self._send({"op": "token", "token": self._token})
        atexit.register(self.close)

    def _send(self, message: dict[str, str], secret: bytes | None = None) -> None:
        """One control line; ``secret`` goes in as ``"value"`` without a ``str`` copy, and the
        line is zeroed after the write."""
        stdin = self._proc.stdin
        if stdin is None or self._proc.poll() is not None:
            raise RuntimeError("Cave's credential process is not running; restart the kernel")
        line = bytearray(json.dumps(message).encode())
        if secret is not None:
            if not _JSON_SAFE.fullmatch(secret):
                raise ValueError("a key must be printable ASCII without quotes or backslashes")
            line[-1:] = b', "value": "'
            line += secret
            line += b'"}'
        line += b"\n"
        try:
            with self._lock:
                view = memoryview(line)
                while view:
                    view = view[stdin.write(view) or 0 :]
                view.release()
        finally:
            line[:] = bytes(len(line))

    def add_key(self, provider: str, upstream: str, key: str | bytes, *, header: str) -> Route:
        """Hand ``key`` to the process, bound to ``upstream``; return the route to use it."""
        upstream = upstream.rstrip("/")
        with self._lock:
            found = self._routes.get((provider, upstream))
            route_id = found[0] if found else f"{len(self._routes) + 1}"
            self._routes[(provider, upstream)] = (route_id, header)
        raw = key.encode() if isinstance(key, str) else key
        self._send({"op": "route", "id": route_id, "upstream": upstream, "header": header}, raw)
        return self._route(route_id, header)

    def route(self, provider: str, upstream: str) -> Route | None:
        """The route for ``provider``'s key at ``upstream``, or None if it has none."""
        with self._lock:
            found = self._routes.get((provider, upstream.rstrip("/")))
        return None if found is None else self._route(*found)

    def _route(self, route_id: str, header: str) -> Route:
        return Route(f"{ROUTE_HOST}/r/{route_id}", self.uds, self._token, header)

    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self) -> None:
        """Kill the process group and remove the socket directory (idempotent)."""
        proc = self._proc
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        shutil.rmtree(self._dir, ignore_errors=True)


def _server_argv() -> list[str]:
    """``python -I -S <server file>``: isolated mode (no user site, no PYTHON* variables) and no
    ``site`` at all: the server needs only the standard library, and starts faster."""
    return [sys.executable, "-I", "-S", str(_SERVER)]


def _server_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR", "TZ")
    return {k: os.environ[k] for k in keep if k in os.environ}
