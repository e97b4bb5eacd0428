"""The credential-holding process: real process, real unix socket, real SDK, loopback upstreams.

Each behaviour that matters to the SDK (streaming, status errors and retries, resets) is run both
directly and through the process, and must come out the same.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cave._errors import ModelResponseError
from cave.models import _credentials
from cave.models._anthropic import AnthropicModel
from cave.models._credential_proxy import CredentialProxy
from cave.models._protocol import ModelRequest
from cave.testing._anthropic_server import AnthropicServer
from cave.testing._script import Failure, reply

KEY = "sk-ant-proxy-test-5b1e"
CHUNKED_SSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
REQUEST = ModelRequest(system=[], messages=[{"role": "user", "content": "hi"}])


def _key_of(headers: dict[str, str]) -> str | None:
    """The key as the loopback server reads it (the SDK may send either header)."""
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else None)


@pytest.fixture(scope="module")
def proxy() -> Iterator[CredentialProxy]:
    p = CredentialProxy()
    yield p
    p.close()


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    for provider in ("anthropic", "anthropic_auth_token"):
        _credentials.forget_key(provider)


def _model(
    how: str, proxy: CredentialProxy, base_url: str, monkeypatch: pytest.MonkeyPatch, **kw: object
) -> AnthropicModel:
    if how == "direct":
        return AnthropicModel(api_key=KEY, base_url=base_url, **kw)  # type: ignore[arg-type]
    proxy.add_key("anthropic", base_url, KEY, header="x-api-key")
    monkeypatch.setattr(_credentials, "_proxy", [proxy])
    return AnthropicModel(base_url=base_url, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["direct", "proxied"])
def test_a_streamed_reply_arrives_with_the_right_key(
    how: str, proxy: CredentialProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "Streaming through the credential process, chunk by chunk."
    with AnthropicServer([reply(text, "x = 1")], chunk_size=8, api_key=KEY) as server:
        base_url = server.base_url
        model = _model(how, proxy, base_url, monkeypatch)
        chunks: list[str] = []
        out = model.query(REQUEST, chunks.append)
        model.close()
        [seen] = server.requests
    assert "".join(chunks) == text and len(chunks) > 1 and out.tool_calls
    assert _key_of(seen.headers) == KEY
    if how == "proxied":
        assert seen.headers["x-api-key"] == KEY and "authorization" not in seen.headers
        assert KEY not in repr(vars(model)) and KEY not in repr(vars(model._client))
        assert model.base_url == base_url.rstrip("/")  # errors name the real endpoint


@pytest.mark.parametrize("how", ["direct", "proxied"])
def test_status_errors_and_retries_pass_through_unchanged(
    how: str, proxy: CredentialProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = [Failure(529), Failure(429, "rate_limit_error", "slow down"), reply("ok")]
    script += [Failure(500, "api_error", "boom")] * 2
    with AnthropicServer(script, api_key=KEY) as server:
        model = _model(how, proxy, server.base_url, monkeypatch, max_retries=2)
        assert model.query(REQUEST).text == "ok"
        assert len(server.requests) == 3
        model.close()
        model = _model(how, proxy, server.base_url, monkeypatch, max_retries=1)
        with pytest.raises(ModelResponseError) as err:
            model.query(REQUEST)
        model.close()
        assert len(server.requests) == 5
        assert all(_key_of(r.headers) == KEY for r in server.requests)
    assert (err.value.status, err.value.error_type, err.value.detail) == (500, "api_error", "boom")


class _RawUpstream:
    """A one-shot HTTP server that sends what a test tells it to, when it tells it to."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.first_sent = threading.Event()
        self.release = threading.Event()
        self.request = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self, head: bytes, first: bytes, rest: bytes | None) -> _RawUpstream:
        self.head, self.first, self.rest = head, first, rest
        self.thread.start()
        return self

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        header, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(body) < length:
            body += conn.recv(65536)
        self.request = header
        conn.sendall(self.head + self.first)
        self.first_sent.set()
        self.release.wait(60)
        if self.rest is None:  # a reset in the middle of the body
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            conn.sendall(self.rest)
        conn.close()
        self.sock.close()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_server_sent_events_are_not_buffered(proxy: CredentialProxy) -> None:
    """The first event reaches the client while the upstream still holds the rest back."""
    head = CHUNKED_SSE
    first = b"event: ping\ndata: {}\n\n"
    upstream = _RawUpstream().start(head, _chunk(first), _chunk(b"data: end\n\n") + b"0\r\n\r\n")
    route = proxy.add_key("anthropic", upstream.base_url, KEY, header="x-api-key")
    with httpx.Client(transport=httpx.HTTPTransport(uds=route.uds)) as client:
        with client.stream(
            "POST", route.base_url + "/v1/messages", headers={"x-api-key": route.token}, json={}
        ) as response:
            parts = response.iter_raw()
            got = next(parts)  # blocks until the first event is through
            assert got == first and not upstream.release.is_set()
            upstream.release.set()
            rest = b"".join(parts)
    assert rest == b"data: end\n\n" and response.status_code == 200
    assert b"x-api-key: " + KEY.encode() in upstream.request


def test_a_reset_mid_body_reaches_the_client_as_a_broken_connection(
    proxy: CredentialProxy,
) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 1000\r\n\r\n"
    upstream = _RawUpstream().start(head, b"data: partial\n\n", None)
    route = proxy.add_key("anthropic", upstream.base_url, KEY, header="x-api-key")
    with httpx.Client(transport=httpx.HTTPTransport(uds=route.uds)) as client:
        with client.stream(
            "POST", route.base_url + "/v1/messages", headers={"x-api-key": route.token}, json={}
        ) as response:
            parts = response.iter_raw()
            assert next(parts) == b"data: partial\n\n"
            upstream.release.set()
            with pytest.raises(httpx.TransportError):
                b"".join(parts)


@pytest.mark.parametrize("how", ["direct", "proxied"])
def test_an_upstream_dying_mid_stream_is_the_same_model_error(
    how: str, proxy: CredentialProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = CHUNKED_SSE
    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":'
        b'"message","role":"assistant","model":"claude-sonnet-5-5","content":[],'
        b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}}'
        b"\n\n"
    )
    upstream = _RawUpstream().start(head, _chunk(start), None)
    model = _model(how, proxy, upstream.base_url, monkeypatch, max_retries=0)
    threading.Thread(target=lambda: (upstream.first_sent.wait(60), upstream.release.set())).start()
    with pytest.raises(ModelResponseError) as err:
        model.query(REQUEST)
    model.close()
    assert (err.value.status, err.value.error_type) == (None, "connection_error")
    assert upstream.base_url in err.value.detail


def test_an_unreachable_upstream_is_a_connection_error(
    proxy: CredentialProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = _model("proxied", proxy, f"http://127.0.0.1:{port}", monkeypatch, max_retries=0)
    with pytest.raises(ModelResponseError) as err:
        model.query(REQUEST)
    model.close()
    assert (err.value.status, err.value.error_type) == (None, "connection_error")
    assert f"127.0.0.1:{port}" in err.value.detail


def test_the_token_is_required_and_routes_are_bound_to_their_upstream(
    proxy: CredentialProxy,
) -> None:
    with AnthropicServer([reply("x")]) as server:
        route = proxy.add_key("anthropic", server.base_url, KEY, header="x-api-key")
        with httpx.Client(transport=httpx.HTTPTransport(uds=route.uds)) as client:
            wrong = client.post(route.base_url + "/v1/messages", headers={"x-api-key": "nope"})
            unknown = client.post(
                "http://cave-credentials/r/999/v1/messages", headers={"x-api-key": route.token}
            )
        assert server.requests == []
    assert wrong.status_code == 401 and "token" in wrong.json()["error"]["message"]
    assert unknown.status_code == 404
    assert proxy.route("anthropic", "http://elsewhere.example") is None


def test_the_process_is_owned_and_holds_no_key_in_its_environment(
    proxy: CredentialProxy,
) -> None:
    pid = proxy.pid
    assert os.getpgid(pid) == pid  # its own process group
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert KEY.encode() not in environ and b"ANTHROPIC" not in environ
    fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
    targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
    assert all(t.startswith(("pipe:", "socket:", "/dev/null", "anon_inode:")) for t in targets)
    assert os.stat(os.path.dirname(proxy.uds)).st_mode & 0o777 == 0o700


def test_it_ends_when_the_kernel_side_closes_its_pipe() -> None:
    p = CredentialProxy()
    proc = p._proc
    assert proc.stdin is not None
    proc.stdin.close()  # what the kernel's death does
    assert proc.wait(timeout=30) == 0
    p.close()
    assert not os.path.exists(p.uds)


def test_upstream_connections_are_kept_alive_and_a_closed_one_is_not_reused(
    proxy: CredentialProxy,
) -> None:
    """Three requests: the first two share one upstream connection, which the server then
    closes; the third goes out on a fresh one instead of failing."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    connections: list[int] = []
    closed = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            connections.append(1)
            self.served = 0

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            self.served += 1
            body = self.headers.get("x-api-key", "").encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = self.served == 2  # closes without saying so

        def finish(self) -> None:
            super().finish()
            self.connection.close()
            closed.set()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    route = proxy.add_key("anthropic", base, KEY, header="x-api-key")
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=route.uds)) as client:
            answers = []
            for i in range(3):
                if i == 2:
                    assert closed.wait(30)  # the server has closed the first connection
                r = client.post(
                    route.base_url + "/v1/x", headers={"x-api-key": route.token}, json={}
                )
                answers.append((r.status_code, r.text))
    finally:
        server.shutdown()
        server.server_close()
    assert answers == [(200, KEY)] * 3
    assert len(connections) == 2
