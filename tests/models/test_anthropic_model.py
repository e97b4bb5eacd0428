"""AnthropicModel end to end: the real SDK against the loopback server."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from cave._errors import MissingAPIKey, ModelResponseError, TurnInterrupted
from cave.models import _credentials, _pricing
from cave.models._anthropic import (
    DEFAULT_MODEL,
    PLACEHOLDER_KEY,
    AnthropicModel,
    tool_calls_from_content,
)
from cave.models._protocol import PYTHON_TOOL, ModelRequest, ToolCall
from cave.testing._anthropic_server import AnthropicServer
from cave.testing._script import Failure, Reply, reply

SYSTEM = [{"type": "text", "text": "You operate a Python runtime.",
           "cache_control": {"type": "ephemeral"}}]
REQUEST = ModelRequest(system=SYSTEM, messages=[{"role": "user", "content": "Sum 1..10"}])
ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL")


@pytest.fixture(autouse=True)
def clean_keys(monkeypatch):
    """No key from the environment or the credential store leaks into (or out of) a test."""
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    for provider in ("anthropic", "anthropic_auth_token"):
        _credentials.forget_key(provider)
    yield
    for provider in ("anthropic", "anthropic_auth_token"):
        _credentials.forget_key(provider)


def make(server: AnthropicServer, **kw) -> AnthropicModel:
    kw.setdefault("api_key", "sk-test")
    return AnthropicModel(base_url=server.base_url, **kw)


def test_end_to_end_streams_text_and_counts_usage_and_cost():
    text = "The sum of 1 to 10 is what I will compute next."
    with AnthropicServer([reply(text, "print(sum(range(1, 11)))")], chunk_size=8) as server:
        model = make(server)
        chunks: list[str] = []
        out = model.query(REQUEST, chunks.append)
        model.close()
        [seen] = server.requests
    assert len(chunks) == -(-len(text) // 8) > 1 and "".join(chunks) == text
    assert out.text == text and out.stop_reason == "tool_use" and out.model == DEFAULT_MODEL
    assert out.tool_calls == (ToolCall(out.content[1]["id"], "print(sum(range(1, 11)))"),)
    assert out.content == [
        {"type": "text", "text": text},
        {"type": "tool_use", "id": out.content[1]["id"], "name": "python",
         "input": {"code": "print(sum(range(1, 11)))"}},
    ]  # no None fields (citations, caller...) that the API would refuse when sent back
    u = out.usage
    assert u.input_tokens > 0 and u.output_tokens > 0 and u.cache_write_tokens > 0
    assert u.cache_read_tokens == 0
    assert u.cost_usd == pytest.approx(_pricing.cost(
        DEFAULT_MODEL, u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens))
    assert u.cost_usd > 0
    body = seen.body
    assert body["model"] == DEFAULT_MODEL and body["stream"] is True
    assert body["system"] == SYSTEM and body["tools"] == [PYTHON_TOOL]
    assert body["max_tokens"] == 8192 and "thinking" not in body


def test_second_call_reads_the_cached_system_prompt_and_content_goes_back_verbatim():
    with AnthropicServer([reply("", "x = 1"), reply("x is 1.")]) as server:
        model = make(server)
        first = model.query(REQUEST)
        history = [*REQUEST.messages, {"role": "assistant", "content": first.content},
                   {"role": "user", "content": [{"type": "tool_result",
                                                 "tool_use_id": first.tool_calls[0].id,
                                                 "content": "ok"}]}]
        second = model.query(ModelRequest(system=SYSTEM, messages=history))
        model.close()
        sent = server.requests[1].body["messages"][1]
    assert sent == {"role": "assistant", "content": first.content}
    assert second.usage.cache_read_tokens == first.usage.cache_write_tokens > 0
    assert second.text == "x is 1."


def test_request_max_tokens_is_capped_by_the_model_setting():
    with AnthropicServer([reply("a"), reply("b")]) as server:
        model = make(server, max_tokens=1000)
        model.query(ModelRequest(system=[], messages=REQUEST.messages, max_tokens=4000))
        model.query(ModelRequest(system=[], messages=REQUEST.messages, max_tokens=300))
        model.close()
        sent = [r.body for r in server.requests]
    assert [b["max_tokens"] for b in sent] == [1000, 300]
    assert "system" not in sent[0]  # empty system is omitted, not sent as []


@pytest.mark.parametrize(
    ("raw", "stop_reason", "expected"),
    [
        ('{"cmd": "ls"}', None, 'no "code" field (it has: cmd)'),
        ('{"code": 1}', None, "not a number"),
        ('["print(1)"]', None, "must be a JSON object"),
        ('{"code": "print(\'trunc', "max_tokens", "cut off at max_tokens"),
    ],
)
def test_malformed_tool_input_gives_a_tool_call_with_an_error(raw, stop_reason, expected):
    with AnthropicServer([Reply(text="Running:", raw_tool_input=raw,
                                stop_reason=stop_reason)]) as server:
        model = make(server)
        out = model.query(REQUEST)
        model.close()
    [call] = out.tool_calls
    assert call.code is None and expected in call.error
    assert call.id == out.content[-1]["id"]  # the loop can answer it with an error tool_result


def test_tool_input_that_is_not_json_is_a_model_response_error():
    with AnthropicServer([Reply(raw_tool_input="print(1)")]) as server:
        model = make(server)
        with pytest.raises(ModelResponseError) as err:
            model.query(REQUEST)
        model.close()
    assert err.value.error_type == "invalid_tool_input" and err.value.status is None


def test_tool_calls_for_other_tools_are_refused_with_a_reason():
    content = [{"type": "tool_use", "id": "t1", "name": "bash", "input": {"cmd": "ls"}},
               {"type": "text", "text": "x"},
               {"type": "tool_use", "id": "t2", "name": "python", "input": {"code": "1"}}]
    first, second = tool_calls_from_content(content)
    assert first.id == "t1" and first.code is None and "no tool named 'bash'" in first.error
    assert second == ToolCall("t2", "1")


def test_thinking_is_kept_verbatim_but_not_streamed_as_text():
    with AnthropicServer([Reply(thinking="Private reasoning.", text="Answer.")]) as server:
        model = make(server)
        chunks: list[str] = []
        out = model.query(REQUEST, chunks.append)
        model.close()
    assert "".join(chunks) == "Answer." and out.text == "Answer."
    assert out.content[0] == {"type": "thinking", "thinking": "Private reasoning.",
                              "signature": out.content[0]["signature"]}
    assert out.content[0]["signature"]


def test_sdk_retries_overload_then_succeeds():
    with AnthropicServer([Failure(529), Failure(500, "api_error", "boom"), reply("ok")]) as server:
        model = make(server, max_retries=2)
        assert model.query(REQUEST).text == "ok"
        model.close()
        assert len(server.requests) == 3


def test_errors_after_retries_become_model_response_error():
    script = [Failure(529)] * 3 + [Failure(400, "invalid_request_error", "bad roles")]
    with AnthropicServer(script) as server:
        model = make(server, max_retries=2)
        with pytest.raises(ModelResponseError) as overloaded:
            model.query(REQUEST)
        assert len(server.requests) == 3
        with pytest.raises(ModelResponseError) as bad:
            model.query(REQUEST)
        model.close()
    assert (overloaded.value.status, overloaded.value.error_type) == (529, "overloaded_error")
    assert (bad.value.status, bad.value.error_type, bad.value.detail) == (
        400, "invalid_request_error", "bad roles")
    assert "%cave model" in str(bad.value)


def test_wrong_key_is_an_authentication_error():
    with AnthropicServer([reply("x")], api_key="sk-right") as server:
        model = make(server, api_key="sk-wrong")
        with pytest.raises(ModelResponseError) as err:
            model.query(REQUEST)
        model.close()
    assert (err.value.status, err.value.error_type) == (401, "authentication_error")


def test_unreachable_endpoint_is_a_connection_error():
    with socket.socket() as s:  # a port that was free a moment ago, nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = AnthropicModel(api_key="k", base_url=f"http://127.0.0.1:{port}", max_retries=0)
    with pytest.raises(ModelResponseError) as err:
        model.query(REQUEST)
    model.close()
    assert (err.value.status, err.value.error_type) == (None, "connection_error")
    assert err.value.detail == f"could not reach http://127.0.0.1:{port}"


def test_server_dying_mid_stream_is_a_connection_error():
    """The server dies once the first text has arrived (an event, not a timer racing latency)."""
    server = AnthropicServer([reply("x" * 100)], latency=0.05, chunk_size=2).start()
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
    assert chunks and len(chunks) < 50  # it had started answering, and did not finish
    assert (err.value.status, err.value.error_type) == (None, "connection_error")
    assert "broke during the reply" in err.value.detail


def test_missing_key_and_endpoint_raises_at_construction():
    with pytest.raises(MissingAPIKey) as err:
        AnthropicModel()
    assert "ANTHROPIC_API_KEY" in str(err.value)


def test_key_resolution_order(monkeypatch):
    with AnthropicServer([reply("1"), reply("2"), reply("3"), reply("4")],
                         api_key="sk-store") as server:
        _credentials.set_key("anthropic", "sk-store")
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-env")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        stored = AnthropicModel()  # base_url from the environment, key from the store
        assert stored.base_url == server.base_url
        assert stored.query(REQUEST).text == "1"
        stored.close()
        _credentials.forget_key("anthropic")
        from_env = AnthropicModel()
        with pytest.raises(ModelResponseError, match="authentication_error"):
            from_env.query(REQUEST)  # sk-env is not the server's key
        from_env.close()
        explicit = AnthropicModel(api_key="sk-store")
        assert explicit.query(REQUEST).text == "2"
        explicit.close()
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        _credentials.set_key("anthropic_auth_token", "sk-store")
        token = AnthropicModel()
        assert token.query(REQUEST).text == "3"
        token.close()
        keys = [r.headers["authorization"] for r in server.requests]
    assert keys == ["Bearer sk-store", "Bearer sk-env", "Bearer sk-store", "Bearer sk-store"]


def test_base_url_without_key_sends_a_placeholder():
    with AnthropicServer([reply("local")]) as server:
        model = AnthropicModel(base_url=server.base_url)
        assert model.query(REQUEST).text == "local"
        model.close()
        assert server.requests[0].headers["authorization"] == f"Bearer {PLACEHOLDER_KEY}"


def test_cancel_from_another_thread_during_a_slow_stream():
    """Cancel from another thread once text has arrived; the next chunk is then a minute away,
    so returning at all proves the cancel woke the reader (no timer races the stream)."""
    text = "word " * 200
    with AnthropicServer([reply(text), reply("after")], latency=0.05, chunk_size=5) as server:
        model = make(server)
        chunks: list[str] = []
        first = threading.Event()
        cancelled_at: list[float] = []

        def cancel() -> None:
            if first.wait(30):
                cancelled_at.append(time.perf_counter())
                model.cancel()

        def on_text(text: str) -> None:
            chunks.append(text)
            server.latency = 60.0
            first.set()

        canceller = threading.Thread(target=cancel)
        canceller.start()
        with pytest.raises(TurnInterrupted) as err:
            model.query(REQUEST, on_text)
        returned_after = time.perf_counter() - cancelled_at[0]
        canceller.join()
        assert err.value.step == 0
        assert 0 < len(chunks) < 200
        assert returned_after < 30  # the next chunk was 60 s away
        server.latency = 0.0
        assert model.query(REQUEST).text == "after"  # the model is usable again
        model.cancel()  # nothing in flight: a no-op
        model.close()


def test_an_exception_in_on_text_stops_the_worker():
    with AnthropicServer([reply("x" * 100)], latency=0.3, chunk_size=2) as server:
        model = make(server)

        def boom(text: str) -> None:
            raise RuntimeError("display failed")

        with pytest.raises(RuntimeError, match="display failed"):
            model.query(REQUEST, boom)
        model.close()
    # the autouse fixture checks that the stream worker is gone


def test_default_model_is_current_and_priced():
    from anthropic._data import DEPRECATED_MODELS

    assert DEFAULT_MODEL not in DEPRECATED_MODELS
    assert _pricing.price(DEFAULT_MODEL) is not None
    assert AnthropicModel.DEFAULT_MODEL == DEFAULT_MODEL


def test_modules_import_without_anthropic():
    code = ("import sys; import cave.models._anthropic, cave.testing._anthropic_server, "
            "cave.testing._scripted_model, cave.models._fenced, cave.models._credentials; "
            "assert 'anthropic' not in sys.modules, 'anthropic imported at module import'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

