"""The loopback Chat Completions server, read with a plain HTTP client (httpx)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from cave._errors import ConfigError
from cave.testing._openai_server import OpenAIServer
from cave.testing._script import Failure, Reply, reply

HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "python", "parameters": {"type": "object"}}}]


def post(server: OpenAIServer, body: object, headers: dict[str, str] | None = None,
         path: str = "/chat/completions") -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=10)


def data_lines(resp: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE body; fails on any other kind of line."""
    out = []
    for event in resp.text.split("\n\n"):
        if not event:
            continue
        assert event.startswith("data: ") and "\n" not in event, event
        out.append(event[6:])
    return out


def test_stream_sends_text_then_tool_call_deltas_then_finish_usage_and_done():
    code = "print(sum(range(1, 11)))"
    with OpenAIServer([reply("Let me add them up.", code)], chunk_size=5) as server:
        resp = post(server, {"model": "m", "messages": HI, "stream": True, "tools": TOOLS,
                             "stream_options": {"include_usage": True}})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    lines = data_lines(resp)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["model"] == "m"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    texts = [d["content"] for d in deltas[1:] if "content" in d]
    assert "".join(texts) == "Let me add them up." and max(map(len, texts)) == 5
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    opening = calls[0]
    assert opening["index"] == 0 and opening["type"] == "function"
    assert opening["id"].startswith("call_")
    assert opening["function"] == {"name": "python", "arguments": ""}
    assert all(set(c) == {"index", "function"} for c in calls[1:])
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"code": code}
    finish = chunks[-2]
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                  "finish_reason": "tool_calls"}]
    assert all(c["usage"] is None for c in chunks[:-1])  # as the API does when usage is asked
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] > 0
    u = usage["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_usage_chunk_only_when_asked_and_not_when_disabled():
    body = {"model": "m", "messages": HI, "stream": True}
    with OpenAIServer([reply("a"), reply("b")]) as server:
        plain = [json.loads(x) for x in data_lines(post(server, body))[:-1]]
    with OpenAIServer([reply("c")], send_usage=False) as server:
        asked = dict(body, stream_options={"include_usage": True})
        withheld = [json.loads(x) for x in data_lines(post(server, asked))[:-1]]
    assert all("usage" not in c for c in plain)
    assert plain[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"] for c in withheld)  # no usage-only chunk at the end


def test_scripted_token_counts_are_sent_as_given():
    with OpenAIServer([Reply(text="x", input_tokens=123, output_tokens=45)]) as server:
        whole = post(server, {"model": "m", "messages": HI}).json()
    assert whole["usage"]["prompt_tokens"] == 123 and whole["usage"]["completion_tokens"] == 45


def test_not_streaming_returns_the_whole_completion():
    with OpenAIServer([Reply(text="Running.", code=("x = 1", "y = 2"), thinking="hmm")]) as server:
        whole = post(server, {"model": "m", "messages": HI, "tools": TOOLS}).json()
    assert whole["object"] == "chat.completion"
    [choice] = whole["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Running." and message["reasoning_content"] == "hmm"
    assert [json.loads(c["function"]["arguments"]) for c in message["tool_calls"]] == [
        {"code": "x = 1"}, {"code": "y = 2"}]
    assert len({c["id"] for c in message["tool_calls"]}) == 2


def test_thinking_streams_as_reasoning_content_before_the_text():
    with OpenAIServer([Reply(thinking="private", text="Answer.")]) as server:
        lines = data_lines(post(server, {"model": "m", "messages": HI, "stream": True}))
    deltas = [json.loads(x)["choices"][0]["delta"] for x in lines[:-1]]
    kinds = [k for d in deltas for k in d if k in ("reasoning_content", "content") and d[k]]
    assert kinds == ["reasoning_content", "content"]


def test_fenced_mode_writes_code_as_python_fences_and_refuses_tools():
    item = reply("Let me look.", "print(1)\n", "x = 2")
    with OpenAIServer([item, item], fenced=True) as server:
        lines = data_lines(post(server, {"model": "m", "messages": HI, "stream": True}))
        refused = post(server, {"model": "small", "messages": HI, "tools": TOOLS})
        assert server.text_of(Reply(text="t", raw_tool_input="```python\nx")) == "t```python\nx"
    chunks = [json.loads(x) for x in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Let me look.\n\n```python\nprint(1)\n```\n\n```python\nx = 2\n```"
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == '"small" does not support tools'


def test_failure_has_the_api_error_shape_and_retry_headers():
    with OpenAIServer([Failure(429, "rate_limit_error", "slow down"),
                       Failure(400, "invalid_request_error", "bad")]) as server:
        limited = post(server, {"model": "m", "messages": HI})
        bad = post(server, {"model": "m", "messages": HI})
    assert limited.status_code == 429 and limited.headers["retry-after-ms"] == "1"
    assert limited.json() == {"error": {"message": "slow down", "type": "rate_limit_error",
                                        "param": None, "code": None}}
    assert bad.status_code == 400 and "retry-after" not in bad.headers


def test_exhausted_script_and_raising_script_answer_500_not_to_be_retried():
    def broken(body):
        raise KeyError("no such step")

    with OpenAIServer([reply("only")]) as server:
        post(server, {"model": "m", "messages": HI})
        exhausted = post(server, {"model": "m", "messages": HI})
    with OpenAIServer(broken) as server:
        raised = post(server, {"model": "m", "messages": HI})
    for resp in (exhausted, raised):
        assert resp.status_code == 500 and resp.headers["x-should-retry"] == "false"
    assert "no scripted reply left" in exhausted.json()["error"]["message"]
    assert "KeyError" in raised.json()["error"]["message"]


def test_callable_script_sees_the_request_body():
    seen = []

    def script(body):
        seen.append(body["messages"][-1]["content"])
        return reply(f"you said {seen[-1]}")

    with OpenAIServer(script) as server:
        whole = post(server, {"model": "m", "messages": HI}).json()
    assert seen == ["hi"] and whole["choices"][0]["message"]["content"] == "you said hi"


CALL = {"id": "call_1", "type": "function", "function": {"name": "python", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "non-empty"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "tool", "tool_call_id": "call_1", "content": "x"}], "must be a response"),
        ([*HI, {"role": "assistant", "content": "", "tool_calls": [CALL]},
          {"role": "user", "content": "and?"}], "did not have response messages: call_1"),
        ([*HI, {"role": "assistant", "content": None, "tool_calls": [CALL]}], "call_1"),
        ([*HI, {"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}],
         "tool_calls"),
    ],
)
def test_invalid_conversations_get_400_and_use_no_script_item(messages, problem):
    with OpenAIServer([reply("ok")]) as server:
        bad = post(server, {"model": "m", "messages": messages})
        good = post(server, {"model": "m", "messages": HI})
    assert bad.status_code == 400 and problem in bad.json()["error"]["message"]
    assert good.json()["choices"][0]["message"]["content"] == "ok"


def test_a_well_paired_tool_conversation_is_accepted():
    messages = [*HI, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "1"},
                {"role": "user", "content": "go on"}]
    with OpenAIServer([reply("fine")]) as server:
        resp = post(server, {"model": "m", "messages": messages, "tools": TOOLS})
    assert resp.status_code == 200, resp.text


def test_missing_model_and_non_json_bodies_get_400():
    with OpenAIServer([]) as server:
        no_model = post(server, {"messages": HI})
        not_json = httpx.post(server.base_url + "/chat/completions", content=b"{nope",
                              headers={"content-type": "application/json"})
        assert server.requests[1].body is None and server.requests[1].raw == b"{nope"
    assert no_model.status_code == 400 and "model" in no_model.json()["error"]["message"]
    assert not_json.status_code == 400


def test_key_check_models_list_and_unknown_paths():
    with OpenAIServer([reply("x")], api_key="sk-right") as server:
        wrong = post(server, {"model": "m", "messages": HI}, {"authorization": "Bearer sk-no"})
        models = httpx.get(server.base_url + "/models",
                           headers={"authorization": "Bearer sk-right"})
        unknown = post(server, {}, {"authorization": "Bearer sk-right"}, path="/completions")
        right = post(server, {"model": "m", "messages": HI}, {"authorization": "Bearer sk-right"})
        assert server.requests[0].headers["authorization"] == "Bearer sk-no"
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert models.json()["data"][0]["id"] == "scripted"
    assert unknown.status_code == 404 and "/v1/chat/completions" in unknown.json()["error"][
        "message"]
    assert right.status_code == 200


def test_base_url_ends_in_v1_and_needs_a_running_server():
    server = OpenAIServer([])
    with pytest.raises(ConfigError, match="OpenAIServer is not running"):
        _ = server.base_url
    with server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.base_url.endswith("/v1")


def test_stop_interrupts_a_slow_stream():
    server = OpenAIServer([reply("x" * 100)], latency=0.5, chunk_size=1).start()
    got: list[object] = []

    def read() -> None:
        try:
            got.append(post(server, {"model": "m", "messages": HI, "stream": True}))
        except httpx.HTTPError as exc:  # the stream breaks off
            got.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    server.stop()
    assert time.perf_counter() - t0 < 2.0
    reader.join(5.0)
    assert not reader.is_alive() and got


def test_module_mode_serves_a_script_file(tmp_path: Path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"text": "from a file", "code": ["y = 2"]}]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cave.testing._openai_server", "--script", str(script), "--fenced"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        whole = httpx.post(base_url + "/chat/completions", json={"model": "m", "messages": HI},
                           timeout=10).json()
        assert whole["choices"][0]["message"]["content"] == "from a file\n\n```python\ny = 2\n```"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM -> clean exit
        proc.stdout.close()
