"""The HTTP plumbing shared by the loopback API fakes (``AnthropicServer``, ``OpenAIServer``).

A fake names its ``handler_class`` (a ``LoopbackHandler`` with the routes and the wire format) and
its ``thread_name``; this base does the rest: it binds 127.0.0.1 only, serves each connection in
its own thread (named ``<thread_name>-conn``), records every request as it arrived, checks the key
(``x-api-key`` or ``Authorization: Bearer``), plays the script, streams server-sent events with
pauses, and stops cleanly: ``stop()`` shuts the open connections down and joins every thread it
started. Fixtures, not models: every reply comes from a script (see ``_script``).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, TypeVar

from .._errors import ConfigError
from ._script import Failure, Reply, Script, ScriptPlayer

RETRY_AFTER_MS = 1
"""Sent as ``retry-after-ms`` with 429/5xx: the SDK ignores ``retry-after: 0`` (it then backs off
0.5 s, 1 s, ...), so a tiny non-zero delay is what makes its retries quick."""

_S = TypeVar("_S", bound="LoopbackServer")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received, as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: Any
    """The parsed JSON body, or None when it was not JSON."""
    raw: bytes = b""


def new_id(prefix: str) -> str:
    """A random id in the APIs' style: ``prefix`` and 24 hex digits."""
    return prefix + uuid.uuid4().hex[:24]


class LoopbackServer:
    """Serves a script on 127.0.0.1 through ``handler_class`` (a test fixture, not a model).

    ``chunk_size``: characters per streamed delta. ``latency``: seconds slept before each delta
    (for interrupt tests). ``api_key``: if set, requests with another key get 401. ``port``: 0 picks
    a free one.
    """

    handler_class: ClassVar[type[LoopbackHandler]]
    """The routes and wire format of the API this server fakes."""
    thread_name: ClassVar[str]
    """Name of the serving thread; connection threads get ``-conn`` appended."""
    url_suffix: ClassVar[str] = ""
    """Appended to ``http://host:port`` in ``base_url`` (``/v1`` where clients expect it)."""

    def __init__(
        self,
        script: Script,
        *,
        chunk_size: int = 16,
        latency: float = 0.0,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1, not {chunk_size}.")
        self.chunk_size = chunk_size
        self.latency = latency
        self.api_key = api_key
        self._port = port
        self._player = ScriptPlayer(script)
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self: _S) -> _S:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer(("127.0.0.1", self._port), self.handler_class, self,
                            f"{self.thread_name}-conn")
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=self.thread_name, daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections, and join every thread the server started."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_connections(timeout=5.0)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise ConfigError(
                f"The {type(self).__name__} is not running: call start() or use `with`.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}{self.url_suffix}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received so far, in order."""
        with self._lock:
            return list(self._requests)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.api_key is None:
            return True
        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else None)
        return key == self.api_key


class _HTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its connection threads, so ``stop()`` can end them."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: Callable[..., Any],
                 app: LoopbackServer, conn_thread_name: str) -> None:
        super().__init__(address, handler)
        self.app = app
        self._conn_thread_name = conn_thread_name
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve, args=(request, client_address),
                                  name=self._conn_thread_name, daemon=True)
        with self._conns_lock:
            self._conns[request] = thread
        thread.start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the client went away (or stop() closed the socket)
        finally:
            self.shutdown_request(request)
            with self._conns_lock:
                self._conns.pop(request, None)

    def close_connections(self, timeout: float) -> None:
        with self._conns_lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, thread in conns:
            thread.join(timeout)


class LoopbackHandler(BaseHTTPRequestHandler):
    """Reads, records and key-checks each request, then hands it to ``route``.

    A subclass gives ``route`` and ``error_body`` (its API's routes and error shape) and the two
    class attributes below; the ``send_*`` helpers write the responses.
    """

    key_error: ClassVar[tuple[str, str, str | None]]
    """The 401 for a wrong key: (error type, message, error code or None)."""
    script_error_type: ClassVar[str]
    """The error type of the 500 sent when the script is used up or raises."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    timeout = 60  # an idle keep-alive connection is dropped after this long
    # Events are many small writes; with Nagle on, each waits for the client's delayed ACK
    # (measured: ~44 ms per request instead of ~2 ms).
    disable_nagle_algorithm = True

    def route(self, method: str, path: str, body: Any) -> None:
        """Answer one authorized request (``path`` without query string or trailing slash)."""
        raise NotImplementedError

    def error_body(self, error_type: str, message: str, code: str | None) -> dict[str, Any]:
        """The API's JSON error body."""
        raise NotImplementedError

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `.requests`; stderr stays quiet

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        app._record(RecordedRequest(method, self.path, headers, body, raw))
        path = self.path.split("?", 1)[0].rstrip("/")
        if not app._authorized(headers):
            error_type, message, code = self.key_error
            return self.send_api_error(401, error_type, message, code=code)
        self.route(method, path, body)

    def script_item(self, body: Any) -> Reply | None:
        """The script's next reply; None when an error was sent instead (a ``Failure``, a script
        function that raised, or a list script used up)."""
        app = self.server.app
        try:
            item = app._player.next(body)
        except Exception as exc:  # a broken script function: say so instead of hanging up
            self.send_api_error(500, self.script_error_type,
                                f"The script raised {type(exc).__name__}: {exc}", retry=False)
            return None
        if item is None:
            self.send_api_error(500, self.script_error_type,
                                app._player.exhausted_message(type(app).__name__), retry=False)
            return None
        if isinstance(item, Failure):
            if item.reset:
                self.reset_connection()
            else:
                self.send_api_error(item.status, item.error_type, item.message,
                                    retry=item.retry, retry_after=item.retry_after)
            return None
        return item

    def reset_connection(self) -> None:
        """Drop the connection with a TCP reset (``SO_LINGER`` 0), as a crashed peer would."""
        import io
        import struct

        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.wfile = io.BytesIO()  # the handler's own finish() writes nowhere

    def send_headers(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("request-id", new_id("req_"))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(data).encode()
        self.send_headers(status, {"content-type": "application/json",
                                   "content-length": str(len(payload)), **(headers or {})})
        self.wfile.write(payload)

    def send_api_error(self, status: int, error_type: str, message: str, retry: bool = True,
                       code: str | None = None, retry_after: float | None = None) -> None:
        """An error answer with the retry headers the SDKs read."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers = {"retry-after": f"{retry_after:g}"}
        elif status == 429 or status >= 500:
            headers = {"retry-after": "0", "retry-after-ms": str(RETRY_AFTER_MS)}
        if not retry:
            headers["x-should-retry"] = "false"  # the SDKs obey it: retrying cannot help
        self.send_json(status, self.error_body(error_type, message, code), headers)

    def send_events(self, events: Iterable[bytes | None], item: Reply | None = None) -> None:
        """A chunked ``text/event-stream`` of encoded events; ``None`` is a pause point (one
        before each delta), where the server waits ``latency`` seconds, and where ``item.fault``
        strikes after ``item.fault_after`` deltas. Ends early (closing the connection) on
        ``stop()``."""
        app = self.server.app
        self.send_headers(200, {"content-type": "text/event-stream; charset=utf-8",
                                "cache-control": "no-cache", "transfer-encoding": "chunked"})
        fault = item.fault if item is not None else None
        pauses = 0
        try:
            for event in events:
                if app._stopping.is_set():
                    self.close_connection = True
                    return
                if event is None:
                    pauses += 1
                    if fault is not None and item is not None and pauses > item.fault_after:
                        return self._strike(fault, item.stall_s)
                    if app.latency > 0:
                        app._stopping.wait(app.latency)
                    continue
                self.wfile.write(b"%X\r\n%s\r\n" % (len(event), event))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client hung up (cancel): nothing to clean up

    def _strike(self, fault: str, stall_s: float) -> None:
        """Inject a streaming fault (see ``Reply.fault``)."""
        if fault == "truncate":  # a well-formed end of the body, without the final events
            self.wfile.write(b"0\r\n\r\n")
            return
        if fault == "stall":
            self.wfile.flush()
            self.server.app._stopping.wait(stall_s)
        self.reset_connection()


def script_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line every loopback server takes; a server adds its own options."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--script", required=True, help="JSON list of replies/failures")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--api-key", default=None)
    return parser


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """``LoopbackServer``'s keyword arguments from ``script_parser``'s options."""
    return {"chunk_size": args.chunk_size, "latency": args.latency, "api_key": args.api_key,
            "port": args.port}


def serve_until_killed(server: LoopbackServer) -> int:
    """Serve until SIGTERM or Ctrl-C; the first stdout line is the base URL."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with server:
        print(server.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0
