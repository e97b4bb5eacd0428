"""``AnthropicServer``: a loopback fake of the Anthropic Messages API that plays a script.

A test fixture, not a model: every reply comes from a script of canned ``Reply``/``Failure`` items
(see ``_script``). It speaks the wire format closely enough that the unmodified ``anthropic`` SDK
works against it through ``base_url``: ``POST /v1/messages`` streaming (``message_start``,
``ping``, ``content_block_start/delta/stop``, ``message_delta``, ``message_stop``) and not
streaming, ``POST /v1/messages/count_tokens``, the API's error bodies and status codes, and the
``x-api-key`` or ``Authorization: Bearer`` key check. It binds 127.0.0.1 only.

Token counts are estimates (characters of JSON // 4), not a tokenizer. Prompt caching is simulated:
a ``cache_control`` breakpoint (on a tool, system block or message block, or the top-level
``cache_control``, which marks the last block) writes the prompt prefix up to it; a later request
whose prefix matches a written one, at a breakpoint or up to 20 blocks before one, reads it. Not
simulated: the minimum cacheable length (1024+ tokens on the real API), TTL expiry, isolation
between keys.

Run it as a process for notebooks and browser tests::

    python -m cave.testing._anthropic_server --script replies.json [--port N]

prints the base URL on its first stdout line and serves until killed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .._errors import ConfigError
from ..models._protocol import PYTHON_TOOL_NAME
from ._script import (
    Failure,
    Reply,
    Script,
    ScriptPlayer,
    estimate_tokens,
    load_script,
    output_chars,
    parse_tool_input,
    scripted_signature,
    tool_use_blocks,
)

RETRY_AFTER_MS = 1
"""Sent as ``retry-after-ms`` with 429/5xx: the SDK ignores ``retry-after: 0`` (it then backs off
0.5 s, 1 s, ...), so a tiny non-zero delay is what makes its retries quick."""


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


@dataclass(frozen=True)
class CacheUsage:
    input_tokens: int
    cache_read: int
    cache_write: int
    ttl: str


class PromptCache:
    """Which prompt prefixes earlier requests wrote to the (simulated) cache."""

    LOOKBACK = 20

    def __init__(self) -> None:
        self._written: set[bytes] = set()
        self._lock = threading.Lock()

    def account(self, body: dict[str, Any], total_tokens: int) -> CacheUsage:
        """Split ``total_tokens`` into uncached, cache-read and cache-write tokens, and record."""
        hashes, ends, breakpoints, ttl = _prefixes(body)
        if not breakpoints:
            return CacheUsage(total_tokens, 0, 0, "5m")
        with self._lock:
            hit = -1
            for b in breakpoints:
                for j in range(b, max(-1, b - self.LOOKBACK), -1):
                    if hashes[j] in self._written:
                        hit = max(hit, j)
                        break
            self._written.update(hashes[b] for b in breakpoints)
        last = breakpoints[-1]
        read_chars = ends[hit] if hit >= 0 else 0
        write_chars = ends[last] - read_chars if last > hit else 0
        read = min(read_chars // 4, total_tokens)
        write = min(write_chars // 4, total_tokens - read)
        return CacheUsage(total_tokens - read - write, read, write, ttl)


def _prefixes(body: dict[str, Any]) -> tuple[list[bytes], list[int], list[int], str]:
    """Per prompt block, in the API's order (tools, system, messages): prefix hash and end offset;
    plus the indices of the blocks that carry a cache breakpoint and the last breakpoint's TTL."""
    blocks: list[tuple[str, Any]] = [("tool", t) for t in body.get("tools") or []]
    system = body.get("system")
    if isinstance(system, str):
        system = [{"type": "text", "text": system}]
    blocks += [("system", b) for b in system or []]
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        role = str(message.get("role")) if isinstance(message, dict) else "?"
        blocks += [(role, b) for b in content or []]
    h = hashlib.sha256(str(body.get("model")).encode()).digest()
    hashes: list[bytes] = []
    ends: list[int] = []
    breakpoints: list[int] = []
    ttl, chars = "5m", 0
    for i, (kind, block) in enumerate(blocks):
        marker = block.get("cache_control") if isinstance(block, dict) else None
        if isinstance(block, dict):
            block = {k: v for k, v in block.items() if k != "cache_control"}
        text = json.dumps([kind, block], sort_keys=True, default=str)
        h = hashlib.sha256(h + text.encode()).digest()
        chars += len(text)
        hashes.append(h)
        ends.append(chars)
        if marker:
            breakpoints.append(i)
            ttl = marker.get("ttl", "5m") if isinstance(marker, dict) else "5m"
    top = body.get("cache_control")
    if top and blocks and (not breakpoints or breakpoints[-1] != len(blocks) - 1):
        breakpoints.append(len(blocks) - 1)
        ttl = top.get("ttl", "5m") if isinstance(top, dict) else "5m"
    return hashes, ends, breakpoints, ttl


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


class AnthropicServer:
    """Serves a script as the Anthropic Messages API on 127.0.0.1 (a test fixture, not a model).

    ``chunk_size``: characters per text/input delta. ``latency``: seconds slept before each delta
    (for interrupt tests). ``api_key``: if set, requests with another key get 401. ``port``: 0 picks
    a free one.
    """

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
        self._cache = PromptCache()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> AnthropicServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer(("127.0.0.1", self._port), _Handler)
        httpd.app = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="cave-anthropic-server", daemon=True,
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

    def __enter__(self) -> AnthropicServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise ConfigError("The AnthropicServer is not running: call start() or use `with`.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received so far, in order."""
        with self._lock:
            return list(self._requests)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # -- the API ---------------------------------------------------------------------------------

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.api_key is None:
            return True
        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else None)
        return key == self.api_key

    def _message(self, body: dict[str, Any], item: Reply) -> tuple[dict[str, Any], list[Any]]:
        """The Message (content filled in) and its blocks as (kind, block, streamed string)."""
        if item.input_tokens is not None:
            total = item.input_tokens
        else:
            total = estimate_tokens(len(json.dumps(body, default=str)))
        cache = self._cache.account(body, total)
        output_tokens = (item.output_tokens if item.output_tokens is not None
                         else estimate_tokens(output_chars(item)))
        usage = {
            "input_tokens": cache.input_tokens,
            "cache_creation_input_tokens": cache.cache_write,
            "cache_read_input_tokens": cache.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache.cache_write if cache.ttl != "1h" else 0,
                "ephemeral_1h_input_tokens": cache.cache_write if cache.ttl == "1h" else 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        blocks: list[tuple[str, dict[str, Any], str]] = []
        if item.thinking:
            blocks.append(("thinking", {"type": "thinking", "thinking": item.thinking,
                                        "signature": scripted_signature(item.thinking)},
                           item.thinking))
        if item.text:
            blocks.append(("text", {"type": "text", "text": item.text}, item.text))
        for block_id, raw in tool_use_blocks(item, lambda: _new_id("toolu_")):
            try:
                data: Any = parse_tool_input(raw)
            except ValueError:
                data = raw  # not JSON: only a stream can carry it as such; whole-message gets text
            blocks.append(("tool_use", {"type": "tool_use", "id": block_id,
                                        "name": PYTHON_TOOL_NAME, "input": data}, raw))
        message = {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [block for _, block, _ in blocks],
            "stop_reason": item.effective_stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        return message, blocks

    def _events(self, message: dict[str, Any], blocks: list[Any]) -> Iterator[tuple[str, Any]]:
        """The SSE events of a streamed reply, in the API's order; ``None`` marks a pause point."""
        usage = message["usage"]
        start = dict(message, content=[], stop_reason=None, stop_sequence=None,
                     usage=dict(usage, output_tokens=min(usage["output_tokens"], 1)))
        yield "message_start", {"type": "message_start", "message": start}
        yield "ping", {"type": "ping"}
        n = self.chunk_size
        for index, (kind, block, streamed) in enumerate(blocks):
            first: dict[str, Any]
            if kind == "text":
                first, delta_type, field = {"type": "text", "text": ""}, "text_delta", "text"
            elif kind == "thinking":
                first = {"type": "thinking", "thinking": "", "signature": ""}
                delta_type, field = "thinking_delta", "thinking"
            else:
                first = dict(block, input={})
                delta_type, field = "input_json_delta", "partial_json"
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": first}
            pieces = [streamed[i : i + n] for i in range(0, len(streamed), n)]
            if kind == "tool_use":
                pieces.insert(0, "")  # the API opens every tool input with an empty delta
            for piece in pieces:
                yield "", None
                yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": delta_type, field: piece}}
            if kind == "thinking":
                yield "content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": block["signature"]}}
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
        yield "message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens",
                                            "cache_read_input_tokens", "output_tokens")},
        }
        yield "message_stop", {"type": "message_stop"}


def _validate(body: Any, needs_max_tokens: bool = True) -> str | None:
    """The API's 400 message for a request body it would refuse, or None."""
    if not isinstance(body, dict):
        return "The request body is not valid JSON: send a JSON object."
    for name in ("model", "messages") + (("max_tokens",) if needs_max_tokens else ()):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str):
        return "model: Input should be a valid string"
    if not isinstance(body["messages"], list):
        return "messages: Input should be a valid list"
    if not body["messages"]:
        return "messages: at least one message is required"
    if needs_max_tokens and (not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1):
        return "max_tokens: Input should be a positive integer"
    return None


class _HTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its connection threads, so ``stop()`` can end them."""

    daemon_threads = True
    block_on_close = False
    app: AnthropicServer

    def __init__(self, address: tuple[str, int], handler: Callable[..., Any]) -> None:
        super().__init__(address, handler)
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve, args=(request, client_address),
                                  name="cave-anthropic-server-conn", daemon=True)
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    timeout = 60  # an idle keep-alive connection is dropped after this long
    # Events are many small writes; with Nagle on, each waits for the client's delayed ACK
    # (measured: ~44 ms per request instead of ~2 ms).
    disable_nagle_algorithm = True

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
            return self._error(401, "authentication_error", "invalid x-api-key")
        if method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            return self._error(404, "not_found_error",
                               f"{method} {path} is not served here (only POST /v1/messages).")
        problem = _validate(body, needs_max_tokens=path == "/v1/messages")
        if problem is not None:
            return self._error(400, "invalid_request_error", problem)
        if path.endswith("count_tokens"):
            return self._json(200, {"input_tokens": estimate_tokens(len(json.dumps(body)))})
        try:
            item = app._player.next(body)
        except Exception as exc:  # a broken script function: say so instead of hanging up
            return self._error(500, "api_error", f"The script raised {type(exc).__name__}: {exc}",
                               retry=False)
        if item is None:
            return self._error(500, "api_error", app._player.exhausted_message("AnthropicServer"),
                               retry=False)
        if isinstance(item, Failure):
            return self._error(item.status, item.error_type, item.message)
        message, blocks = app._message(body, item)
        if body.get("stream"):
            self._stream(app, message, blocks)
        else:
            self._json(200, message)

    def _send_headers(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("request-id", _new_id("req_"))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(data).encode()
        self._send_headers(status, {"content-type": "application/json",
                                    "content-length": str(len(payload)), **(headers or {})})
        self.wfile.write(payload)

    def _error(self, status: int, error_type: str, message: str, retry: bool = True) -> None:
        headers: dict[str, str] = {}
        if status == 429 or status >= 500:
            headers = {"retry-after": "0", "retry-after-ms": str(RETRY_AFTER_MS)}
        if not retry:
            headers["x-should-retry"] = "false"  # the SDK obeys it: retrying cannot help
        body = {"type": "error", "error": {"type": error_type, "message": message},
                "request_id": _new_id("req_")}
        self._json(status, body, headers)

    def _stream(self, app: AnthropicServer, message: dict[str, Any], blocks: list[Any]) -> None:
        self._send_headers(200, {"content-type": "text/event-stream; charset=utf-8",
                                 "cache-control": "no-cache", "transfer-encoding": "chunked"})
        try:
            for name, data in app._events(message, blocks):
                if app._stopping.is_set():
                    self.close_connection = True
                    return
                if data is None:
                    if app.latency > 0:
                        app._stopping.wait(app.latency)
                    continue
                event = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                self.wfile.write(b"%X\r\n%s\r\n" % (len(event), event))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client hung up (cancel): nothing to clean up


def main(argv: list[str] | None = None) -> int:
    """Serve a script file until killed; the first stdout line is the base URL."""
    import signal

    parser = argparse.ArgumentParser(
        prog="python -m cave.testing._anthropic_server",
        description="Loopback Anthropic Messages API that plays a script of canned replies "
                    "(a test fixture, not a model).",
    )
    parser.add_argument("--script", required=True, help="JSON list of replies/failures")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    server = AnthropicServer(load_script(args.script), chunk_size=args.chunk_size,
                             latency=args.latency, api_key=args.api_key, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with server:
        print(server.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
