"""The shared loopback plumbing: a minimal fake built on the ``handler_class`` hook, and the
connection threads of both shipped servers, named after their server."""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any

import httpx
import pytest

from cave._errors import ConfigError
from cave.testing._anthropic_server import AnthropicServer
from cave.testing._loopback import LoopbackHandler, LoopbackServer
from cave.testing._openai_server import OpenAIServer
from cave.testing._script import Failure, reply


class _EchoHandler(LoopbackHandler):
    """``POST /echo``: the scripted text, one event per ``chunk_size`` characters."""

    key_error = ("auth", "wrong key", "bad_key")
    script_error_type = "script"

    def route(self, method: str, path: str, body: Any) -> None:
        if (method, path) != ("POST", "/echo"):
            return self.send_api_error(404, "missing", f"{method} {path}")
        item = self.script_item(body)
        if item is not None:
            n = self.server.app.chunk_size
            self.send_events(piece for i in range(0, len(item.text), n)
                             for piece in (None, item.text[i : i + n].encode()))
        return None

    def error_body(self, error_type: str, message: str, code: str | None) -> dict[str, Any]:
        return {"kind": error_type, "text": message, "code": code}


class EchoServer(LoopbackServer):
    handler_class = _EchoHandler
    thread_name = "cave-test-echo"
    url_suffix = "/api"


def _new_threads(before: set[threading.Thread]) -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t not in before)


def test_a_fake_needs_only_its_handler_class():
    script = [reply("hello world"), Failure(429, "slow", "later")]
    with EchoServer(script, chunk_size=4, api_key="k") as server:
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/api")
        ok = httpx.post(server.base_url.removesuffix("/api") + "/echo", headers={"x-api-key": "k"},
                        json={"n": 1})
        wrong = httpx.post(server.base_url.removesuffix("/api") + "/echo",
                           headers={"authorization": "Bearer nope"})
        busy = httpx.post(server.base_url.removesuffix("/api") + "/echo?x=1",
                          headers={"authorization": "Bearer k"})
        spent = httpx.post(server.base_url.removesuffix("/api") + "/echo/",
                           headers={"x-api-key": "k"})
        recorded = server.requests
    assert ok.status_code == 200 and ok.headers["transfer-encoding"] == "chunked"
    assert ok.text == "hello world" and ok.headers["request-id"].startswith("req_")
    assert (wrong.status_code, wrong.json()) == (401, {"kind": "auth", "text": "wrong key",
                                                       "code": "bad_key"})
    assert busy.status_code == 429 and busy.headers["retry-after-ms"] == "1"
    assert busy.json() == {"kind": "slow", "text": "later", "code": None}
    assert spent.status_code == 500 and spent.headers["x-should-retry"] == "false"
    assert spent.json()["kind"] == "script" and spent.json()["text"].startswith("EchoServer has")
    assert [(r.method, r.path, r.body) for r in recorded] == [
        ("POST", "/echo", {"n": 1}), ("POST", "/echo", None), ("POST", "/echo?x=1", None),
        ("POST", "/echo/", None)]
    with pytest.raises(ConfigError, match="EchoServer is not running"):
        _ = server.base_url


@pytest.mark.parametrize("server_class", [AnthropicServer, OpenAIServer])
def test_connection_threads_are_named_after_their_server_and_stop_joins_them(server_class):
    before = set(threading.enumerate())
    server = server_class([]).start()
    host, port = server.base_url.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/nowhere")  # a 404 on a keep-alive connection: its thread stays
        assert conn.getresponse().read()
        expected = sorted([server.thread_name, f"{server.thread_name}-conn"])
        deadline = time.monotonic() + 3.0
        while _new_threads(before) != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _new_threads(before) == expected
    finally:
        server.stop()
        conn.close()
    assert _new_threads(before) == []
