"""The loopback Messages API server, driven by the real anthropic SDK (no patching)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import anthropic
import pytest

from cave._errors import ConfigError
from cave.testing._anthropic_server import AnthropicServer
from cave.testing._script import Failure, Reply, load_script, reply

MODEL = "claude-sonnet-5-5"
HI = [{"role": "user", "content": "hi"}]


def client(server: AnthropicServer, key: str = "test-key", **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=key, **kw)


def raw_post(server: AnthropicServer, body: bytes, headers: dict[str, str] | None = None):
    host, port = server.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/v1/messages", body=body,
                     headers={"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def sse_events(payload: bytes) -> list[tuple[str, dict]]:
    events = []
    for chunk in payload.decode().split("\n\n"):
        if not chunk.strip():
            continue
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_stream_text_and_tool_use_through_the_sdk():
    code = "import math\nprint(math.pi)"
    with AnthropicServer([reply("The answer is coming right up.", code)], chunk_size=8) as server:
        with client(server) as c, c.messages.stream(model=MODEL, max_tokens=100, messages=HI,
                                                    system="Be brief.") as stream:
            texts = list(stream.text_stream)
            message = stream.get_final_message()
        [seen] = server.requests
    assert texts == ["The answ", "er is co", "ming rig", "ht up."]
    assert message.model == MODEL and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text" and text.text == "The answer is coming right up."
    assert tool.type == "tool_use" and tool.name == "python" and tool.id.startswith("toolu_")
    assert tool.input == {"code": code}
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    assert seen.method == "POST" and seen.path == "/v1/messages"
    assert seen.body["stream"] is True and seen.body["messages"] == HI
    assert seen.body["system"] == "Be brief."
    assert seen.headers["authorization"] == "Bearer test-key"


def test_stream_has_the_api_event_sequence():
    body = {"model": MODEL, "max_tokens": 50, "messages": HI, "stream": True}
    with AnthropicServer([reply("hello world", "x = 1")], chunk_size=6) as server:
        status, headers, payload = raw_post(server, json.dumps(body).encode())
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["request-id"].startswith("req_")
    events = sse_events(payload)
    names = [name for name, _ in events]
    assert names == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "content_block_start", *["content_block_delta"] * (1 + -(-len('{"code": "x = 1"}') // 6)),
        "content_block_stop",
        "message_delta", "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["type"] == "message" and start["role"] == "assistant" and start["model"] == MODEL
    assert {"input_tokens", "output_tokens", "cache_creation_input_tokens",
            "cache_read_input_tokens"} <= set(start["usage"])
    tool_start = events[6][1]["content_block"]
    assert tool_start["name"] == "python" and tool_start["input"] == {}
    assert tool_start["id"].startswith("toolu_")
    partial = [d["delta"]["partial_json"] for n, d in events[7:-3] if n == "content_block_delta"]
    assert partial[0] == "" and json.loads("".join(partial)) == {"code": "x = 1"}
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] >= 1


def test_create_without_stream_returns_the_whole_message():
    with AnthropicServer([Reply(text="Done.", output_tokens=7, input_tokens=40)]) as server:
        with client(server) as c:
            message = c.messages.create(model=MODEL, max_tokens=20, messages=HI)
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Done."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (40, 7)


def test_sdk_retries_529_then_500_then_succeeds():
    script = [Failure(529), Failure(500, "api_error", "Internal server error"), reply("ok")]
    with AnthropicServer(script) as server:
        with client(server, max_retries=2) as c:
            t0 = time.perf_counter()
            message = c.messages.create(model=MODEL, max_tokens=20, messages=HI)
            elapsed = time.perf_counter() - t0
        assert len(server.requests) == 3
        retry_counts = [r.headers["x-stainless-retry-count"] for r in server.requests]
    assert message.content[0].text == "ok"
    assert retry_counts == ["0", "1", "2"]
    assert elapsed < 1.0  # retry-after-ms makes the SDK's back-off tiny (it ignores retry-after: 0)


def test_failure_has_the_api_error_shape_and_retry_headers():
    with AnthropicServer([Failure(529)]) as server:
        body = {"model": MODEL, "max_tokens": 5, "messages": HI}
        status, headers, payload = raw_post(server, json.dumps(body).encode())
    data = json.loads(payload)
    assert status == 529
    assert data["type"] == "error"
    assert data["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert headers["retry-after"] == "0" and headers["request-id"].startswith("req_")


def test_scripted_400_is_a_bad_request_error_and_not_retried():
    script = [Failure(400, "invalid_request_error", "messages: roles must alternate")]
    with AnthropicServer(script) as server:
        with client(server) as c, pytest.raises(anthropic.BadRequestError) as err:
            c.messages.create(model=MODEL, max_tokens=20, messages=HI)
        assert len(server.requests) == 1
    assert err.value.status_code == 400
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "roles must alternate" in str(err.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"model": MODEL, "messages": HI}).encode(), "max_tokens: Field required"),
        (json.dumps({"max_tokens": 5, "messages": HI}).encode(), "model: Field required"),
        (json.dumps({"model": MODEL, "max_tokens": 5}).encode(), "messages: Field required"),
        (json.dumps({"model": MODEL, "max_tokens": 5, "messages": []}).encode(), "at least one"),
    ],
)
def test_invalid_requests_get_400_and_use_no_script_item(body, message):
    with AnthropicServer([reply("unused")]) as server:
        status, _, payload = raw_post(server, body)
        assert server._player.used == 0
    error = json.loads(payload)["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert message in error["message"]


def test_missing_max_tokens_is_a_bad_request_error_in_the_sdk():
    with AnthropicServer([reply("unused")]) as server, client(server) as c:
        with pytest.raises(anthropic.BadRequestError, match="max_tokens: Field required"):
            c.post("/v1/messages", body={"model": MODEL, "messages": HI},
                   cast_to=anthropic.types.Message)


def test_wrong_key_gets_401_and_the_right_keys_pass():
    with AnthropicServer([reply("a"), reply("b")], api_key="sk-right") as server:
        with client(server, key="sk-wrong") as c, pytest.raises(anthropic.AuthenticationError) as e:
            c.messages.create(model=MODEL, max_tokens=5, messages=HI)
        assert e.value.body["error"]["type"] == "authentication_error"
        with client(server, key="sk-right") as c:  # this SDK sends the key as a bearer token
            assert c.messages.create(model=MODEL, max_tokens=5, messages=HI).content[0].text == "a"
        body = json.dumps({"model": MODEL, "max_tokens": 5, "messages": HI}).encode()
        status, _, _ = raw_post(server, body, {"x-api-key": "sk-right"})
        assert status == 200
        assert len(server.requests) == 3


def test_prompt_cache_creation_then_read():
    system = [{"type": "text", "text": "You are terse. " * 200,
               "cache_control": {"type": "ephemeral"}}]
    with AnthropicServer([reply("1"), reply("2"), reply("3"), reply("4")]) as server:
        with client(server) as c:
            first = c.messages.create(model=MODEL, max_tokens=5, system=system, messages=HI).usage
            second = c.messages.create(model=MODEL, max_tokens=5, system=system, messages=HI).usage
            other = c.messages.create(model="claude-opus-5-5", max_tokens=5, system=system,
                                      messages=HI).usage
            plain = c.messages.create(model=MODEL, max_tokens=5, messages=HI).usage
    assert first.cache_creation_input_tokens > 700 and first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.cache_creation_input_tokens == 0
    assert second.input_tokens == first.input_tokens  # the uncached tail is the same
    assert other.cache_read_input_tokens == 0  # the cache is per model
    assert (plain.cache_read_input_tokens, plain.cache_creation_input_tokens) == (0, 0)


def test_prompt_cache_moving_breakpoint_reads_the_old_prefix_and_writes_the_new_part():
    def user(text, cached=False):
        block = {"type": "text", "text": text}
        if cached:
            block["cache_control"] = {"type": "ephemeral"}
        return {"role": "user", "content": [block]}

    turn1 = [user("question one " * 100, cached=True)]
    turn2 = [user("question one " * 100),
             {"role": "assistant", "content": [{"type": "text", "text": "answer " * 100}]},
             user("question two " * 100, cached=True)]
    with AnthropicServer([reply("a"), reply("b")]) as server, client(server) as c:
        u1 = c.messages.create(model=MODEL, max_tokens=5, messages=turn1).usage
        u2 = c.messages.create(model=MODEL, max_tokens=5, messages=turn2).usage
    assert u1.cache_read_input_tokens == 0 and u1.cache_creation_input_tokens > 300
    assert u2.cache_read_input_tokens == u1.cache_creation_input_tokens  # found by lookback
    assert u2.cache_creation_input_tokens > 300  # the new turn is written


def test_stream_usage_reports_the_cache_too():
    tools = [{"name": "python", "description": "run " * 300,
              "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}]
    with AnthropicServer([reply("a"), reply("b")]) as server, client(server) as c:
        for expect_read in (False, True):
            with c.messages.stream(model=MODEL, max_tokens=5, messages=HI, tools=tools) as s:
                usage = s.get_final_message().usage
            assert (usage.cache_read_input_tokens > 0) is expect_read
            assert (usage.cache_creation_input_tokens > 0) is not expect_read


def test_top_level_cache_control_marks_the_last_block():
    messages = [{"role": "user", "content": "long question " * 100}]
    with AnthropicServer([reply("a"), reply("b")]) as server, client(server) as c:
        kw = {"model": MODEL, "max_tokens": 5, "messages": messages,
              "cache_control": {"type": "ephemeral"}}
        u1 = c.messages.create(**kw).usage
        u2 = c.messages.create(**kw).usage
    assert u1.cache_creation_input_tokens > 0
    assert u2.cache_read_input_tokens == u1.cache_creation_input_tokens


def test_exhausted_script_answers_500_naming_the_fix_without_sdk_retries():
    with AnthropicServer([reply("only one")]) as server, client(server, max_retries=3) as c:
        c.messages.create(model=MODEL, max_tokens=5, messages=HI)
        with pytest.raises(anthropic.InternalServerError) as err:
            c.messages.create(model=MODEL, max_tokens=5, messages=HI)
        assert len(server.requests) == 2  # x-should-retry: false
    assert err.value.body["error"]["type"] == "api_error"
    assert "Add more replies" in err.value.body["error"]["message"]


def test_callable_script_sees_the_request_body():
    def script(body):
        return reply(f"you said {body['messages'][-1]['content']}")

    with AnthropicServer(script) as server, client(server) as c:
        message = c.messages.create(model=MODEL, max_tokens=5,
                                    messages=[{"role": "user", "content": "ping"}])
    assert message.content[0].text == "you said ping"


def test_a_script_function_that_raises_is_reported_not_retried():
    def script(body):
        raise KeyError("no such turn")

    with AnthropicServer(script) as server, client(server, max_retries=3) as c:
        with pytest.raises(anthropic.InternalServerError, match="The script raised KeyError"):
            c.messages.create(model=MODEL, max_tokens=5, messages=HI)
        assert len(server.requests) == 1


def test_thinking_block_is_streamed_with_its_signature():
    script = [Reply(thinking="Let me think.", text="42")]
    with AnthropicServer(script) as server, client(server) as c:
        with c.messages.stream(model=MODEL, max_tokens=5, messages=HI) as stream:
            texts = list(stream.text_stream)
            message = stream.get_final_message()
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    assert thinking.signature.startswith("scripted-")
    assert texts == ["42"] and text.text == "42"


def test_count_tokens():
    with AnthropicServer([]) as server, client(server) as c:
        count = c.messages.count_tokens(model=MODEL, messages=HI)
    assert count.input_tokens > 0


def test_unknown_path_is_404():
    with AnthropicServer([]) as server, client(server) as c:
        with pytest.raises(anthropic.NotFoundError):
            c.models.retrieve("claude-sonnet-5-5")


def test_stop_closes_kept_alive_connections_and_the_port():
    server = AnthropicServer([reply("a"), reply("b")]).start()
    port = int(server.base_url.rsplit(":", 1)[1])
    with client(server) as c:
        c.messages.create(model=MODEL, max_tokens=5, messages=HI)
        c.messages.create(model=MODEL, max_tokens=5, messages=HI)
        server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(ConfigError, match="not running"):
        server.base_url  # noqa: B018


def test_stop_interrupts_a_slow_stream():
    server = AnthropicServer([reply("x" * 200)], latency=5.0, chunk_size=1).start()
    result: list[BaseException] = []

    def read():
        try:
            with client(server, max_retries=0) as c:
                stream = c.messages.create(model=MODEL, max_tokens=5, messages=HI, stream=True)
                stream.response.read()
        except BaseException as exc:  # the stream breaks off
            result.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    server.stop()
    assert time.perf_counter() - t0 < 2.0
    reader.join(5.0)
    assert not reader.is_alive()


def test_module_mode_serves_a_script_file(tmp_path: Path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"text": "from a file", "code": ["y = 2"]},
                                  {"failure": {"status": 529}}]))
    assert load_script(script) == [reply("from a file", "y = 2"), Failure(529)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cave.testing._anthropic_server", "--script", str(script)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        with anthropic.Anthropic(base_url=base_url, api_key="k") as c:
            message = c.messages.create(model=MODEL, max_tokens=5, messages=HI)
        assert message.content[0].text == "from a file"
        assert message.content[1].input == {"code": "y = 2"}
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM -> clean exit
        proc.stdout.close()
