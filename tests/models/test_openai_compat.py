"""OpenAICompatModel end to end: httpx against the loopback Chat Completions server, and the real
agent loop over the real runtime, in tool mode and in fenced mode."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cave._errors import ConfigError, ModelResponseError, TurnInterrupted
from cave.agent._events import TextDelta
from cave.agent._loop import Agent
from cave.models import _credentials
from cave.models._chat_format import FENCED_INSTRUCTIONS
from cave.models._openai_compat import (
    OPENAI_URL,
    OpenAICompatModel,
    _error_fields,
    is_openai_name,
    model_from_name,
)
from cave.models._protocol import PYTHON_TOOL, ModelRequest, ToolCall
from cave.runtime._namespace import AgentRuntime
from cave.testing._openai_server import OpenAIServer
from cave.testing._script import Failure, Reply, reply

SYSTEM = [{"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}},
          {"type": "text", "text": "Injected objects:\n(none)"}]
REQUEST = ModelRequest(system=SYSTEM, messages=[{"role": "user", "content": "Sum 1..10"}])


@pytest.fixture(autouse=True)
def clean_keys(monkeypatch):
    """No OpenAI key or endpoint leaks into a test (the root conftest checks threads)."""
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    _credentials.forget_key("openai")
    yield
    _credentials.forget_key("openai")


def make(server: OpenAIServer, **kw: Any) -> OpenAICompatModel:
    kw.setdefault("tools", not server.fenced)
    return OpenAICompatModel("local-model", base_url=server.base_url, **kw)


@contextlib.contextmanager
def canned(*responses: tuple[int, dict[str, str], bytes], served: threading.Event | None = None):
    """A server answering each POST with the next raw (status, headers, body), then closing the
    connection: for wire shapes the scripted server never sends (other servers' quirks)."""
    pending = list(responses)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            status, headers, body = pending.pop(0)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            if served is not None:
                served.set()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def sse(*chunks: object) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n"
                    for c in chunks)


SSE = {"content-type": "text/event-stream"}


# -- tool mode --------------------------------------------------------------------------------

def test_tool_mode_streams_text_and_returns_tool_calls_usage_and_no_cost():
    text = "I will add them up with Python."
    with OpenAIServer([reply(text, "print(sum(range(1, 11)))")], chunk_size=6) as server:
        model = make(server)
        chunks: list[str] = []
        out = model.query(REQUEST, chunks.append)
        model.close()
        [seen] = server.requests
    assert len(chunks) > 1 and "".join(chunks) == text
    assert out.text == text and out.stop_reason == "tool_use" and out.model == "local-model"
    call_id = out.content[1]["id"]
    assert out.tool_calls == (ToolCall(call_id, "print(sum(range(1, 11)))"),)
    assert out.content == [{"type": "text", "text": text},
                           {"type": "tool_use", "id": call_id, "name": "python",
                            "input": {"code": "print(sum(range(1, 11)))"}}]
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0
    assert out.usage.cost_usd is None and not model.last_usage_estimated
    body = seen.body
    assert seen.path == "/v1/chat/completions" and "authorization" not in seen.headers
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "local-model" and body["max_tokens"] == 8192
    assert body["messages"] == [
        {"role": "system", "content": "Rules.\n\nInjected objects:\n(none)"},
        {"role": "user", "content": "Sum 1..10"}]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "python", "description": PYTHON_TOOL["description"],
        "parameters": PYTHON_TOOL["input_schema"]}}]
    assert "cache_control" not in json.dumps(body)


def test_agent_turn_in_tool_mode_runs_code_and_sends_the_translated_history():
    runtime = AgentRuntime()
    runtime.inject("numbers", [3, 1, 2])
    script = [reply("Sorting.", "ordered = sorted(numbers)\nprint(ordered)"),
              reply("They are [1, 2, 3].")]
    with OpenAIServer(script) as server:
        model = make(server)
        streamed: list[str] = []
        result = Agent(runtime, model, echo=False).run(
            "sort them", lambda e: streamed.append(e.text) if isinstance(e, TextDelta) else None)
        model.close()
        first, second = (r.body for r in server.requests)
    assert result.answer == "They are [1, 2, 3]." and result.steps == 2
    assert runtime.retrieve("ordered") == [1, 2, 3]
    assert "".join(streamed) == "Sorting.They are [1, 2, 3]."
    assert result.usage.cost_usd is None and result.usage.input_tokens > 0
    assert "tools" in first and "tools" in second
    assistant, tool_message = second["messages"][2:]
    [call] = assistant["tool_calls"]
    assert assistant["content"] == "Sorting."
    assert json.loads(call["function"]["arguments"]) == {
        "code": "ordered = sorted(numbers)\nprint(ordered)"}
    assert tool_message == {"role": "tool", "tool_call_id": call["id"], "content": "[1, 2, 3]"}
    # the server checks the pairing as the real API does: a 200 means the history was valid


def test_agent_turn_in_fenced_mode_runs_the_blocks_and_sends_them_back_as_text():
    runtime = AgentRuntime()
    runtime.inject("numbers", [3, 1, 2])
    script = [reply("Sorting, then checking.", "ordered = sorted(numbers)\nprint(ordered)",
                    "print(len(ordered))"),
              reply("They are [1, 2, 3].")]
    history: list[dict[str, Any]] = []
    with OpenAIServer(script, fenced=True, chunk_size=3) as server:
        model = make(server)
        streamed: list[str] = []
        result = Agent(runtime, model, history=history, echo=False).run(
            "sort them", lambda e: streamed.append(e.text) if isinstance(e, TextDelta) else None)
        model.close()
        first, second = (r.body for r in server.requests)
        sent_text = server.text_of(script[0])
    assert result.answer == "They are [1, 2, 3]." and runtime.retrieve("ordered") == [1, 2, 3]
    # the code is not streamed as text (the loop shows it as code)
    assert "".join(streamed) == "Sorting, then checking.\nThey are [1, 2, 3]."
    assert "tools" not in first and "tools" not in second
    assert second["messages"][0]["content"].endswith(FENCED_INSTRUCTIONS)
    assert second["messages"][2] == {"role": "assistant", "content": sent_text}
    assert second["messages"][3] == {
        "role": "user", "content": "Output of code block 1:\n[1, 2, 3]\n\n"
                                   "Output of code block 2:\n3"}
    # the history keeps one shape for every provider: verbatim text plus tool_use blocks
    assert history[1]["content"] == [
        {"type": "text", "text": sent_text},
        {"type": "tool_use", "id": "fenced_1", "name": "python",
         "input": {"code": "ordered = sorted(numbers)\nprint(ordered)\n"}},
        {"type": "tool_use", "id": "fenced_2", "name": "python",
         "input": {"code": "print(len(ordered))\n"}}]


def test_fenced_ids_continue_across_turns_and_model_instances():
    runtime = AgentRuntime()
    history: list[dict[str, Any]] = []
    with OpenAIServer([reply("", "x = 1"), reply("Set."), reply("", "x += 1"),
                       reply("Now 2.")], fenced=True) as server:
        for prompt in ("set x", "add one"):
            model = make(server)  # a new instance, as after a checkpoint restore
            Agent(runtime, model, history=history, echo=False).run(prompt)
            model.close()
    ids = [b["id"] for m in history for b in m["content"] if b.get("type") == "tool_use"]
    assert ids == ["fenced_1", "fenced_2"] and runtime.retrieve("x") == 2


def test_fenced_reply_without_code_is_the_answer_and_an_unclosed_fence_is_not_run():
    cut = Reply(text="Here:", raw_tool_input="\n```python\nprint('never closed')\n",
                stop_reason="max_tokens")
    with OpenAIServer([reply("Plain answer, ```inline``` only."), cut], fenced=True) as server:
        model = make(server)
        plain = model.query(REQUEST)
        chunks: list[str] = []
        unclosed = model.query(REQUEST, chunks.append)
        model.close()
    assert plain.tool_calls == () and plain.stop_reason == "end_turn"
    assert plain.text == "Plain answer, ```inline``` only."
    assert unclosed.tool_calls == () and unclosed.stop_reason == "max_tokens"
    assert "was not run" in unclosed.text
    assert "".join(chunks) == "Here:\n```python\nprint('never closed')\n"  # released at the end


# -- malformed tool calls ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "stop_reason", "expected"),
    [
        ("print(1)", None, "were not valid JSON"),
        ('{"code": "print(\'cut', "max_tokens", "cut off at max_tokens"),
        ('{"cmd": "ls"}', None, 'no "code" field (it has: cmd)'),
        ('["print(1)"]', None, "must be a JSON object"),
    ],
)
def test_unusable_tool_arguments_give_a_call_with_an_error(raw, stop_reason, expected):
    with OpenAIServer([Reply(text="Running:", raw_tool_input=raw,
                             stop_reason=stop_reason)]) as server:
        model = make(server)
        out = model.query(REQUEST)
        model.close()
    [call] = out.tool_calls
    assert call.code is None and expected in call.error
    block = out.content[-1]
    assert call.id == block["id"] and isinstance(block["input"], dict)


def test_raw_newlines_inside_the_code_string_are_accepted():
    with OpenAIServer([Reply(raw_tool_input='{"code": "x = 1\ny = 2"}')]) as server:
        model = make(server)
        out = model.query(REQUEST)
        model.close()
    assert out.tool_calls[0].code == "x = 1\ny = 2"


def test_a_rejected_call_goes_back_to_the_model_as_an_error_result():
    runtime = AgentRuntime()
    with OpenAIServer([Reply(raw_tool_input="print(1)"), reply("", "ok = True"),
                       reply("Done.")]) as server:
        model = make(server)
        result = Agent(runtime, model, echo=False).run("go")
        model.close()
        second = server.requests[1].body["messages"]
    assert result.answer == "Done." and runtime.retrieve("ok") is True
    assert second[-1]["role"] == "tool" and "were not valid JSON" in second[-1]["content"]


def test_other_servers_stream_quirks():
    """Comments and `event:` lines, calls without `index`, arguments sent as an object,
    cached-token usage in the last choice chunk, finish_reason "length"."""
    body = (b": keep-alive\n\nevent: message\n" + sse(
        {"model": "served-name", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"id": "call 1", "function": {"name": "python", "arguments": {"code": "a = 1"}}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"id": "c2", "function": {"name": "python", "arguments": '{"code": '}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"function": {"arguments": '"b = 2"}'}}]}}]},
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
         "usage": {"prompt_tokens": 100, "completion_tokens": 7,
                   "prompt_tokens_details": {"cached_tokens": 60}}},
        b"[DONE]"))
    with canned((200, SSE, body)) as url:
        model = OpenAICompatModel("m", base_url=url)
        out = model.query(REQUEST)
        model.close()
    assert out.text == "Hi" and out.model == "served-name" and out.stop_reason == "max_tokens"
    assert [(c.id, c.code) for c in out.tool_calls] == [("call_1", "a = 1"), ("c2", "b = 2")]
    u = out.usage
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens) == (40, 60, 7)


def test_usage_is_estimated_when_the_server_sends_none():
    with OpenAIServer([reply("x" * 40)], send_usage=False) as server:
        model = make(server)
        out = model.query(REQUEST)
        model.close()
    assert model.last_usage_estimated
    assert out.usage.output_tokens == 10 and out.usage.input_tokens > 10
    assert out.usage.cost_usd is None


# -- errors -----------------------------------------------------------------------------------

def test_retries_on_429_and_5xx_then_succeeds():
    with OpenAIServer([Failure(429, "rate_limit_error", "slow"), Failure(500, "server_error"),
                       reply("ok")]) as server:
        model = make(server, max_retries=2)
        assert model.query(REQUEST).text == "ok"
        model.close()
        assert len(server.requests) == 3


def test_errors_after_retries_carry_status_and_the_servers_message():
    script = [Failure(503, "server_error", "loading model")] * 3 + [
        Failure(400, "invalid_request_error", "bad roles")]
    with OpenAIServer(script) as server:
        model = make(server, max_retries=2)
        with pytest.raises(ModelResponseError) as busy:
            model.query(REQUEST)
        assert len(server.requests) == 3
        with pytest.raises(ModelResponseError) as bad:
            model.query(REQUEST)
        assert len(server.requests) == 4  # a 400 is not retried
        model.close()
    assert (busy.value.status, busy.value.error_type, busy.value.detail) == (
        503, "server_error", "loading model")
    assert (bad.value.status, bad.value.detail) == (400, "bad roles")


def test_a_model_without_tools_says_so_through_the_error():
    with OpenAIServer([reply("x")], fenced=True) as server:
        model = make(server, tools=True)
        with pytest.raises(ModelResponseError) as err:
            model.query(REQUEST)
        model.close()
    assert err.value.status == 400 and "does not support tools" in err.value.detail


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"message": "m", "type": "t"}}, ("t", "m")),
        ({"error": {"code": 400, "message": "m"}}, ("400", "m")),  # llama.cpp
        ({"object": "error", "message": "m", "type": "BadRequestError"}, ("BadRequestError", "m")),
        ({"error": "model not found"}, (None, "model not found")),
        ({"detail": "Not Found"}, (None, "Not Found")),
        ([1], (None, None)),
    ],
)
def test_error_bodies_of_various_servers(body, expected):
    assert _error_fields(body) == expected


def test_error_statuses_without_a_json_body_and_the_v1_hint():
    with canned((404, {}, b"404 page not found"), (401, {"content-type": "application/json"},
                                                   b'{"detail": "no key"}')) as url:
        root = url.removesuffix("/v1")
        model = OpenAICompatModel("m", base_url=root, max_retries=0)
        with pytest.raises(ModelResponseError) as missing:
            model.query(REQUEST)
        with pytest.raises(ModelResponseError) as denied:
            model.query(REQUEST)
        model.close()
    assert (missing.value.status, missing.value.error_type) == (404, "not_found_error")
    assert missing.value.detail.startswith("404 page not found") and "/v1" in missing.value.detail
    assert (denied.value.status, denied.value.error_type, denied.value.detail) == (
        401, "authentication_error", "no key")


def test_an_error_inside_the_stream_and_a_stream_cut_short():
    error = sse({"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
                {"error": {"message": "out of memory", "type": "server_error"}})
    cut = sse({"choices": [{"index": 0, "delta": {"content": "Hel"}}]})
    junk = b"data: {not json\n\n"
    with canned((200, SSE, error), (200, SSE, cut), (200, SSE, junk)) as url:
        model = OpenAICompatModel("m", base_url=url)
        errors = []
        for _ in range(3):
            with pytest.raises(ModelResponseError) as err:
                model.query(REQUEST)
            errors.append(err.value)
        model.close()
    assert [(e.status, e.error_type) for e in errors] == [
        (None, "server_error"), (None, "connection_error"), (None, "invalid_stream")]
    assert errors[0].detail == "out of memory" and "ended before" in errors[1].detail


def test_wrong_key_is_401_and_keys_resolve_argument_store_environment(monkeypatch):
    with OpenAIServer([reply("1"), reply("2"), reply("3")], api_key="sk-right") as server:
        wrong = make(server, api_key="sk-wrong", max_retries=0)
        with pytest.raises(ModelResponseError) as err:
            wrong.query(REQUEST)
        wrong.close()
        monkeypatch.setenv("OPENAI_API_KEY", "sk-right")
        from_env = make(server)
        assert from_env.query(REQUEST).text == "1"
        from_env.close()
        _credentials.set_key("openai", "sk-right")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-env-loses")
        stored = make(server)
        assert stored.query(REQUEST).text == "2"
        assert "sk-right" not in repr(stored)
        stored.close()
        explicit = make(server, api_key="sk-right")
        assert explicit.query(REQUEST).text == "3"
        explicit.close()
    assert err.value.status == 401 and "Incorrect API key" in err.value.detail


def test_unreachable_endpoint_is_a_connection_error_after_retries():
    with socket.socket() as s:  # a port that was free a moment ago, nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = OpenAICompatModel("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(ModelResponseError) as err:
        model.query(REQUEST)
    model.close()
    assert (err.value.status, err.value.error_type) == (None, "connection_error")
    assert err.value.detail == f"could not reach http://127.0.0.1:{port}/v1"


def test_server_dying_mid_stream_is_a_connection_error():
    """The server dies once the first text has arrived (an event, not a timer racing latency)."""
    server = OpenAIServer([reply("x" * 100)], latency=0.05, chunk_size=2).start()
    model = make(server)
    chunks: list[str] = []
    first = threading.Event()
    killer = threading.Thread(target=lambda: first.wait(30) and server.stop())
    killer.start()

    def on_text(text: str) -> None:
        chunks.append(text)
        first.set()

    with pytest.raises(ModelResponseError) as err:
        model.query(REQUEST, on_text)
    first.set()
    killer.join()
    server.stop()
    model.close()
    assert chunks and len(chunks) < 50
    assert (err.value.status, err.value.error_type) == (None, "connection_error")
    assert "broke during the reply" in err.value.detail


# -- cancel -----------------------------------------------------------------------------------

def _cancel_when(model: Any, ready: threading.Event) -> tuple[threading.Thread, list[float]]:
    """Cancel ``model`` from another thread as soon as ``ready`` is set (an event, not a timer)."""
    at: list[float] = []

    def cancel() -> None:
        if ready.wait(30):
            at.append(time.perf_counter())
            model.cancel()

    thread = threading.Thread(target=cancel)
    thread.start()
    return thread, at


def _worker_gone_within(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(t.name == "cave-openai-stream" for t in threading.enumerate()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.parametrize("fenced", [False, True])
def test_cancel_from_another_thread_during_a_slow_stream(fenced):
    """Cancel once text has arrived, with the next chunk a minute away: query and its worker
    ending at all proves the cancel woke the reader (no timer races the stream)."""
    with OpenAIServer([reply("word " * 200), reply("after")], latency=0.05, chunk_size=5,
                      fenced=fenced) as server:
        model = make(server)
        chunks: list[str] = []
        first = threading.Event()

        def on_text(text: str) -> None:
            chunks.append(text)
            server.latency = 60.0
            first.set()

        canceller, at = _cancel_when(model, first)
        with pytest.raises(TurnInterrupted) as err:
            model.query(REQUEST, on_text)
        returned_after = time.perf_counter() - at[0]
        assert _worker_gone_within(20)
        canceller.join()
        assert err.value.step == 0 and 0 < len(chunks) < 200
        assert returned_after < 30  # the next chunk was 60 s away
        server.latency = 0.0
        assert model.query(REQUEST).text == "after"  # usable again
        model.cancel()  # nothing in flight: a no-op
        model.close()


def test_cancel_during_a_retry_back_off():
    served = threading.Event()
    with canned((429, {"retry-after": "15"}, b'{"error": {"message": "busy"}}'),
                served=served) as url:
        model = OpenAICompatModel("m", base_url=url, max_retries=1)
        canceller, at = _cancel_when(model, served)  # the 429 is out: the worker backs off 15 s
        with pytest.raises(TurnInterrupted):
            model.query(REQUEST)
        returned_after = time.perf_counter() - at[0]
        assert _worker_gone_within(10)
        canceller.join()
        model.close()
    assert returned_after < 10


def test_agent_cancel_stops_a_fenced_turn_and_leaves_a_valid_history():
    runtime = AgentRuntime()
    history: list[dict[str, Any]] = []
    with OpenAIServer([reply("", "x = 1"), reply("slow " * 200), reply("", "y = 2"),
                       reply("Fine.")], fenced=True, latency=0.01, chunk_size=5) as server:
        model = make(server)
        agent = Agent(runtime, model, history=history, echo=False)
        in_step_2 = threading.Event()

        def on_event(event: Any) -> None:
            if isinstance(event, TextDelta) and event.step == 2:
                in_step_2.set()

        canceller, _ = _cancel_when(agent, in_step_2)
        with pytest.raises(TurnInterrupted) as err:
            agent.run("go", on_event)
        canceller.join()
        assert err.value.step == 2
        server.latency = 0.0
        result = Agent(runtime, model, history=history, echo=False).run("again")
        model.close()
        last = server.requests[-1].body["messages"]
    assert result.answer == "Fine." and runtime.retrieve("y") == 2
    assert any("This turn was stopped" in m["content"] for m in last if m["role"] == "user")


def test_an_exception_in_on_text_stops_the_worker():
    with OpenAIServer([reply("x" * 100)], latency=0.3, chunk_size=2) as server:
        model = make(server)

        def boom(text: str) -> None:
            raise RuntimeError("display failed")

        with pytest.raises(RuntimeError, match="display failed"):
            model.query(REQUEST, boom)
        model.close()
    # the autouse fixture checks that the stream worker is gone


# -- selection --------------------------------------------------------------------------------

def test_model_from_name(monkeypatch):
    tools = model_from_name("openai:qwen2.5-coder:7b", "http://localhost:11434/v1/")
    assert (tools.name, tools.base_url, tools.tools) == (
        "qwen2.5-coder:7b", "http://localhost:11434/v1", True)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    fenced = model_from_name("openai-fenced:gemma")
    assert (fenced.base_url, fenced.tools) == ("http://127.0.0.1:8000/v1", False)
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        model_from_name("openai:gpt-4.1")
    _credentials.set_key("openai", "sk-x")
    assert model_from_name("openai:gpt-4.1").base_url == OPENAI_URL
    for bad in ("openai:", "claude-sonnet-5-5", "anthropic:x"):
        with pytest.raises(ConfigError, match="openai:<model>"):
            model_from_name(bad, "http://h/v1")
    assert is_openai_name("openai:x") and is_openai_name("openai-fenced:x")
    assert not is_openai_name("openai") and not is_openai_name("claude-sonnet-5-5")
    for model in (tools, fenced):
        model.close()


def test_bad_base_url_and_limits_are_config_errors():
    for url in ("localhost:11434/v1", "", "ftp://host/v1"):
        with pytest.raises(ConfigError, match="http://localhost:11434/v1"):
            OpenAICompatModel("m", base_url=url)
    with pytest.raises(ConfigError, match="max_retries"):
        OpenAICompatModel("m", base_url="http://h/v1", max_retries=-1)


def test_modules_import_without_httpx():
    code = ("import sys; import cave.models._openai_compat, cave.testing._openai_server; "
            "assert 'httpx' not in sys.modules, 'httpx imported at module import'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
