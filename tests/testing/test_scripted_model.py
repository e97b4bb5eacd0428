"""ScriptedModel: a script played in-process, in the same shape AnthropicModel gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cave._errors import ConfigError, ModelResponseError, TurnInterrupted
from cave.models._anthropic import AnthropicModel
from cave.models._protocol import Model, ModelRequest, ToolCall
from cave.testing._anthropic_server import AnthropicServer
from cave.testing._script import Failure, Reply, load_script, reply
from cave.testing._scripted_model import ScriptedModel

REQUEST = ModelRequest(system=[{"type": "text", "text": "You run Python."}],
                       messages=[{"role": "user", "content": "What is 6*7?"}])


def test_reply_with_text_and_code():
    model = ScriptedModel([reply("Computing the product now.", "print(6*7)", "x = 42")],
                          chunk_size=10)
    chunks: list[str] = []
    out = model.query(REQUEST, chunks.append)
    assert isinstance(model, Model)
    assert chunks == ["Computing ", "the produc", "t now."]
    assert out.text == "Computing the product now."
    assert out.content == [
        {"type": "text", "text": "Computing the product now."},
        {"type": "tool_use", "id": "toolu_scripted_1", "name": "python",
         "input": {"code": "print(6*7)"}},
        {"type": "tool_use", "id": "toolu_scripted_2", "name": "python",
         "input": {"code": "x = 42"}},
    ]
    assert out.tool_calls == (ToolCall("toolu_scripted_1", "print(6*7)"),
                              ToolCall("toolu_scripted_2", "x = 42"))
    assert out.stop_reason == "tool_use" and out.model == "scripted"
    assert out.usage.input_tokens > 10 and out.usage.output_tokens > 0
    assert out.usage.cost_usd == 0.0
    assert model.requests == [REQUEST]


def test_text_only_reply_ends_the_turn_and_ids_keep_counting():
    model = ScriptedModel([reply("", "a = 1"), Reply(text="Done.", input_tokens=5,
                                                     output_tokens=2)])
    assert model.query(REQUEST).tool_calls[0].id == "toolu_scripted_1"
    out = model.query(REQUEST)
    assert (out.text, out.tool_calls, out.stop_reason) == ("Done.", (), "end_turn")
    assert out.content == [{"type": "text", "text": "Done."}]
    assert (out.usage.input_tokens, out.usage.output_tokens) == (5, 2)


def test_failure_raises_model_response_error():
    model = ScriptedModel([Failure(529)])
    with pytest.raises(ModelResponseError) as err:
        model.query(REQUEST)
    assert (err.value.status, err.value.error_type, err.value.detail) == (
        529, "overloaded_error", "Overloaded")


def test_exhausted_script_names_the_fix():
    model = ScriptedModel([reply("one")])
    model.query(REQUEST)
    with pytest.raises(ConfigError, match="no scripted reply left.*Add more replies"):
        model.query(REQUEST)


def test_malformed_tool_input_becomes_a_tool_call_error():
    model = ScriptedModel([Reply(raw_tool_input='{"source": "print(1)"}'),
                           Reply(raw_tool_input='{"code": 5}'),
                           Reply(raw_tool_input="not json")])
    [call] = model.query(REQUEST).tool_calls
    assert call.code is None and 'no "code" field (it has: source)' in call.error
    [call] = model.query(REQUEST).tool_calls
    assert call.code is None and "not a number" in call.error
    with pytest.raises(ModelResponseError) as err:  # the SDK refuses non-JSON input too
        model.query(REQUEST)
    assert err.value.error_type == "invalid_tool_input"


def test_cancel_during_streaming_raises_turn_interrupted_and_then_clears():
    model = ScriptedModel([reply("a long answer " * 10), reply("next")], chunk_size=4)
    seen: list[str] = []

    def on_text(text: str) -> None:
        seen.append(text)
        if len(seen) == 2:
            model.cancel()

    with pytest.raises(TurnInterrupted) as err:
        model.query(REQUEST, on_text)
    assert err.value.step == 0 and len(seen) == 2
    assert model.query(REQUEST).text == "next"


def test_callable_script_gets_the_request_body():
    bodies = []

    def script(body):
        bodies.append(body)
        return reply(f"{len(body['messages'])} message(s)")

    model = ScriptedModel(script, name="fn")
    assert model.query(REQUEST).text == "1 message(s)"
    assert bodies[0]["model"] == "fn" and bodies[0]["system"] == list(REQUEST.system)


def test_bad_script_items_are_refused():
    with pytest.raises(ConfigError, match="Script item 0"):
        ScriptedModel(["just a string"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="must return a Reply"):
        ScriptedModel(lambda body: "text").query(REQUEST)  # type: ignore[arg-type,return-value]


def test_load_script_from_json(tmp_path: Path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([
        {"text": "hi", "code": "x = 1"},
        {"code": ["a", "b"], "stop_reason": "max_tokens"},
        {"failure": {"status": 429, "error_type": "rate_limit_error", "message": "slow down"}},
    ]))
    assert load_script(path) == [
        reply("hi", "x = 1"),
        Reply(code=("a", "b"), stop_reason="max_tokens"),
        Failure(429, "rate_limit_error", "slow down"),
    ]
    assert load_script([{"text": "x"}]) == [reply("x")]


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ({"text": "not a list"}, "must hold a JSON list"),
        ([{"txt": "typo"}], r"unknown reply keys \['txt'\]"),
        ([{"failure": {"code": 500}}], "write a failure as"),
        ([{"failure": {"status": 500, "kind": "x"}}], r"unknown failure keys \['kind'\]"),
        ([{"code": [1]}], "'code' must be a string"),
        (["text"], "must be an object"),
    ],
)
def test_load_script_errors(items, match):
    with pytest.raises(ConfigError, match=match):
        load_script(items)


def test_load_script_unreadable_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="Cannot read the script"):
        load_script(tmp_path / "missing.json")


def test_scripted_model_matches_anthropic_model_through_the_server():
    """The same script gives the loop the same reply from either side (ids aside)."""
    script = [
        reply("Let me check.", "print(1)\nprint(2)"),
        Reply(thinking="hmm", text="Here.", code=("x = 1",)),
        Reply(raw_tool_input='{"code": ["x"]}'),
        Reply(raw_tool_input='{"code": "print(\'cut', stop_reason="max_tokens"),
        reply("All done."),
    ]
    scripted = ScriptedModel(script, name="claude-sonnet-5-5")
    with AnthropicServer(script) as server:
        real = AnthropicModel("claude-sonnet-5-5", base_url=server.base_url)
        try:
            for _ in script:
                a, b = scripted.query(REQUEST), real.query(REQUEST)
                assert (a.text, a.stop_reason, a.model) == (b.text, b.stop_reason, b.model)
                assert [(c.code, c.error) for c in a.tool_calls] == [
                    (c.code, c.error) for c in b.tool_calls]
                assert [_no_ids(x) for x in a.content] == [_no_ids(x) for x in b.content]
        finally:
            real.close()


def _no_ids(block: dict) -> dict:
    return {k: v for k, v in block.items() if k != "id"}
