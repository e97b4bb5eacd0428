"""Every model fault, through both providers, against the loopback servers' fault injection.

Each test drives the real agent loop with a real runtime, over HTTP to ``AnthropicServer``
(through the official ``anthropic`` SDK) or ``OpenAIServer`` (through ``OpenAICompatModel``,
httpx). The scripted code appends to ``hits``, so each test checks that code the model asked for
ran at most once whatever was retried, and then that the conversation is still valid by running
one more turn against the same server (the Anthropic server refuses an empty assistant message,
as the API does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from cave._errors import BudgetReached, EmptyModelReply, ModelResponseError
from cave.agent._events import CodeStarted, Notice
from cave.agent._loop import Agent, AgentSettings
from cave.agent._recovery import RetryPolicy
from cave.models._anthropic import AnthropicModel
from cave.models._openai_compat import OpenAICompatModel
from cave.runtime._namespace import AgentRuntime
from cave.testing._anthropic_server import AnthropicServer
from cave.testing._openai_server import OpenAIServer
from cave.testing._script import (
    CUT_MARKERS,
    Failure,
    Reply,
    _quoted_cut_input,
    reply,
    split_tool_call,
)

PROVIDERS = ["anthropic", "openai"]
FAST = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05)
HIT = "hits.append(len(hits) + 1)\nprint('hit', len(hits))"


@contextmanager
def served(provider: str, script: Sequence[Reply | Failure], *, idle: float = 120.0,
           max_tokens: int = 8192) -> Iterator[tuple[Any, Any]]:
    if provider == "anthropic":
        server: Any = AnthropicServer([*script, reply("still here")]).start()
        model: Any = AnthropicModel("claude-test", base_url=server.base_url, max_retries=2,
                                    stream_idle_timeout=idle)
    else:
        server = OpenAIServer([*script, reply("still here")]).start()
        model = OpenAICompatModel("m", base_url=server.base_url, max_retries=2,
                                  stream_idle_timeout=idle)
    try:
        yield server, model
    finally:
        model.close()
        server.stop()


def run_turn(model: Any, *, max_tokens: int = 8192, history: list[Any] | None = None,
             runtime: AgentRuntime | None = None) -> tuple[Any, list[Any], AgentRuntime,
                                                           list[str], list[Any]]:
    """One turn ("go"); (result or the error, history, runtime, notices, events)."""
    runtime = runtime or AgentRuntime()
    runtime.inject("hits", [])
    history = history if history is not None else []
    events: list[Any] = []
    agent = Agent(runtime, model, history=history, echo=False, retry=FAST,
                  settings=AgentSettings(max_tokens=max_tokens))
    try:
        outcome: Any = agent.run("go", events.append)
    except Exception as exc:  # the test inspects it
        outcome = exc
    notices = [e.text for e in events if isinstance(e, Notice)]
    return outcome, history, runtime, notices, events


def then_still_valid(model: Any, history: list[Any], runtime: AgentRuntime) -> None:
    """The next turn goes through against the same (validating) server."""
    result = Agent(runtime, model, history=history, echo=False, retry=FAST).run("and now?")
    assert result.answer == "still here"
    assert all(m["content"] for m in history), "an empty message is in the history"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_429_with_retry_after_is_honoured(provider: str) -> None:
    script = [Failure(429, "rate_limit_error", "slow down", retry_after=1),
              reply("", HIT), reply("done")]
    with served(provider, script) as (server, model):
        t0 = time.monotonic()
        outcome, history, runtime, _, _ = run_turn(model)
        waited = time.monotonic() - t0
        assert outcome.answer == "done", outcome
        assert runtime.retrieve("hits") == [1]
        assert waited >= 1.0  # a lower bound: the client waited what retry-after asked
        then_still_valid(model, history, runtime)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("before,after", [
    ([], [Failure(500, "api_error", "try later"), Failure(500, "api_error", "again")]),
    ([], [Failure(529, "overloaded_error", "try later"),
          Failure(529, "overloaded_error", "again")]),
    ([Failure(0, reset=True)], []),  # a connection reset before the turn's first reply
], ids=["500", "529", "reset"])
def test_server_errors_and_resets_are_retried(provider: str, before: list[Failure],
                                              after: list[Failure]) -> None:
    script = [*before, reply("", HIT), *after, reply("done")]
    with served(provider, script) as (server, model):
        outcome, history, runtime, _, _ = run_turn(model)
        assert outcome.answer == "done", outcome
        assert runtime.retrieve("hits") == [1]
        then_still_valid(model, history, runtime)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_errors_outliving_the_client_retries_end_the_turn_with_a_message(provider: str) -> None:
    script = [Failure(529, "overloaded_error", "Overloaded")] * 20
    with served(provider, script) as (server, model):
        outcome, history, runtime, notices, _ = run_turn(model)
        assert isinstance(outcome, ModelResponseError)
        assert "529" in str(outcome) and "re-run the cell" in str(outcome)
        assert len(notices) == FAST.max_retries  # the loop's own retries, each shown
        assert history == []  # nothing happened: the prompt is not left dangling


@pytest.mark.parametrize("provider", PROVIDERS)
def test_billing_and_quota_errors_are_never_retried(provider: str) -> None:
    failure = (Failure(402, "billing_error", "Your credit balance is too low", retry=True)
               if provider == "anthropic" else
               Failure(429, "insufficient_quota", "You exceeded your current quota"))
    with served(provider, [failure, reply("never")]) as (server, model):
        outcome, _, _, notices, _ = run_turn(model)
        assert isinstance(outcome, ModelResponseError)
        assert len(server.requests) == 1 and not notices


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("fault", ["reset", "truncate"])
def test_a_reply_broken_mid_stream_is_asked_again_and_its_code_runs_once(
        provider: str, fault: str) -> None:
    broken = Reply(text="Working on it. " * 4, code=(HIT,), fault=fault, fault_after=3)
    script = [broken, reply("Working on it.", HIT), reply("done")]
    with served(provider, script) as (server, model):
        outcome, history, runtime, notices, _ = run_turn(model)
        assert outcome.answer == "done", outcome
        assert runtime.retrieve("hits") == [1]
        said = "broke during the reply" if fault == "reset" else "ended before the reply"
        assert any(said in n and "retrying" in n for n in notices), notices
        then_still_valid(model, history, runtime)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stalled_stream_is_abandoned_by_the_idle_watchdog(provider: str) -> None:
    stalled = Reply(text="Thinking " * 10, fault="stall", fault_after=2, stall_s=60)
    with served(provider, [stalled, reply("", HIT), reply("done")], idle=2.0) as (server, model):
        t0 = time.monotonic()
        outcome, history, runtime, notices, _ = run_turn(model)
        assert outcome.answer == "done", outcome
        assert time.monotonic() - t0 < 50  # not the server's 60 s silence
        assert any("stalled: no data for 2 s" in n for n in notices), notices
        assert runtime.retrieve("hits") == [1]
        then_still_valid(model, history, runtime)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_tool_input_json_never_runs_and_the_turn_recovers(provider: str) -> None:
    script = [Reply(raw_tool_input='{"code": "hits.append(99)" oops'), reply("", HIT),
              reply("done")]
    with served(provider, script) as (server, model):
        outcome, history, runtime, _, _ = run_turn(model)
        assert outcome.answer == "done", outcome
        assert runtime.retrieve("hits") == [1]
        then_still_valid(model, history, runtime)


SPLIT_CODE = ("hits.append(len(hits) + 1)\ntotal = sum(range(10))\n"
              "print('joined', total, 'run', len(hits))")


@contextmanager
def served_fn(provider: str, script: Any, **options: Any) -> Iterator[tuple[Any, Any]]:
    """A server playing a script function (``split_tool_call``): Anthropic without prefill,
    as Claude 4.6 and later are, so the rejoin cannot lean on it."""
    if provider == "anthropic":
        server: Any = AnthropicServer(script, prefill=False, **options).start()
        model: Any = AnthropicModel("claude-test", base_url=server.base_url, max_retries=2)
    else:
        server = OpenAIServer(script, **options).start()
        model = OpenAICompatModel("m", base_url=server.base_url, max_retries=2)
    try:
        yield server, model
    finally:
        model.close()
        server.stop()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_tool_call_split_by_max_tokens_is_rejoined_before_it_runs(provider: str) -> None:
    cut_at = len('{"code": "hits.append(len(hits) + 1)\\ntotal = su')
    script = split_tool_call(SPLIT_CODE, cut_at, text="Computing.",
                             then=[reply("done"), reply("still here")])
    with served_fn(provider, script) as (server, model):
        outcome, history, runtime, notices, events = run_turn(model, max_tokens=1000)
        assert outcome.answer == "done", outcome
        ran = [e.code for e in events if isinstance(e, CodeStarted)]
        assert ran == [SPLIT_CODE]  # the joined code, run exactly once
        assert runtime.retrieve("hits") == [1] and runtime.retrieve("total") == 45
        ask = server.requests[1].body
        assert ask["max_tokens"] == 1000  # continued, not asked again with more room
        assert ask["messages"][-1]["role"] == "user"  # no prefill: a user message quotes the cut
        assert CUT_MARKERS[0].strip() in json.dumps(ask["messages"][-1])
        assert ask["tool_choice"] in ({"type": "none"}, "none")
        assert any("rejoined" in n for n in notices)
        call = next(b for b in history[1]["content"] if b["type"] == "tool_use")
        assert call["input"] == {"code": SPLIT_CODE}  # the history holds the whole call
        then_still_valid(model, history, runtime)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_continuation_cut_again_is_continued_again(provider: str) -> None:
    whole = json.dumps({"code": SPLIT_CODE})
    played: list[str] = []

    def script(body: dict[str, Any]) -> Reply:
        quoted = _quoted_cut_input(body["messages"][-1])
        if not played:
            played.append("cut")
            return Reply(raw_tool_input=whole[:20], stop_reason="max_tokens")
        if quoted == whole[:20]:  # the first continuation is cut too
            played.append("cut again")
            return Reply(text=whole[20:45], stop_reason="max_tokens")
        if quoted is not None and whole.startswith(quoted):
            played.append("rest")
            return Reply(text=whole[len(quoted):])
        played.append("after")
        return reply("done") if played.count("after") == 1 else reply("still here")

    with served_fn(provider, script) as (server, model):
        outcome, history, runtime, notices, events = run_turn(model, max_tokens=1000)
        assert outcome.answer == "done", outcome
        assert played[:3] == ["cut", "cut again", "rest"]
        assert [e.code for e in events if isinstance(e, CodeStarted)] == [SPLIT_CODE]
        assert runtime.retrieve("hits") == [1]
        then_still_valid(model, history, runtime)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_cut_call_that_does_not_rejoin_is_asked_again_with_more_room(provider: str) -> None:
    cut = Reply(text="Here goes.", raw_tool_input='{"code": "hits.append(99)\\nx = [1, 2',
                stop_reason="max_tokens")
    garbled = Reply(text="Sorry, here is the code again: print(1)")  # does not continue the JSON
    script = [cut, garbled, reply("Here goes.", HIT), reply("done")]
    with served(provider, script) as (server, model):
        outcome, history, runtime, notices, events = run_turn(model, max_tokens=1000)
        assert outcome.answer == "done", outcome
        assert runtime.retrieve("hits") == [1]  # the cut call never ran; the re-asked one once
        assert [r.body["max_tokens"] for r in server.requests][:3] == [1000, 1000, 2000]
        assert any("could not be rejoined (the joined input is not JSON" in n for n in notices)
        then_still_valid(model, history, runtime)


def test_the_openai_sdk_reads_the_split_and_sends_the_continuation_cave_builds() -> None:
    """The loopback split, streamed to the official ``openai`` SDK, is a call cut at "length";
    Cave's continuation body goes through the SDK's own parameters and gets the rest."""
    import openai

    from cave.agent._rejoin import continuation_request
    from cave.models._protocol import ModelRequest

    cut_at = 30
    script = split_tool_call(SPLIT_CODE, cut_at, then=[reply("done")])
    with served_fn("openai", script) as (server, model):
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        request = ModelRequest(system=[{"type": "text", "text": "sys"}],
                               messages=[{"role": "user", "content": [{"type": "text",
                                                                       "text": "go"}]}])
        body = model.request_body(request)
        with pytest.raises(openai.LengthFinishReasonError) as cut_off:  # how the SDK says it
            with client.chat.completions.stream(**{k: v for k, v in body.items()
                                                   if k != "stream"}) as stream:
                stream.get_final_completion()
        choice = cut_off.value.completion.choices[0]
        assert choice.finish_reason == "length"
        [sdk_call] = choice.message.tool_calls or []
        partial = sdk_call.function.arguments
        assert partial == json.dumps({"code": SPLIT_CODE})[:cut_at]
        ask = continuation_request(request, _cut_reply(partial), partial)
        rest = client.chat.completions.create(**{**model.request_body(ask), "stream": False})
        assert json.loads(partial + (rest.choices[0].message.content or "")) == {
            "code": SPLIT_CODE}


def _cut_reply(partial: str) -> Any:
    from cave.models._protocol import ModelReply, Usage

    return ModelReply("", (), Usage(), "max_tokens", [
        {"type": "tool_use", "id": "call_1", "name": "python", "input": {}}], "m", partial)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_max_tokens_in_text_is_continued(provider: str) -> None:
    script = [Reply(text="The answer is ", stop_reason="max_tokens"), reply(" 42.")]
    with served(provider, script) as (server, model):
        outcome, history, runtime, notices, _ = run_turn(model)
        assert outcome.answer == "The answer is 42.", outcome
        last = server.requests[1].body["messages"][-1]
        assert last["role"] == "assistant"  # the partial reply, sent back to be continued
        assert history[-1] == {"role": "assistant",
                               "content": [{"type": "text", "text": "The answer is 42."}]}
        then_still_valid(model, history, runtime)


def test_max_tokens_in_text_is_continued_without_prefill_where_the_model_refuses_it() -> None:
    script = [Reply(text="The answer is ", stop_reason="max_tokens"), reply(" 42."),
              reply("still here")]
    with served_fn("anthropic", script) as (server, model):  # prefill=False, as Claude 4.6+
        outcome, history, runtime, notices, _ = run_turn(model)
        assert outcome.answer == "The answer is 42.", outcome
        refused, asked = server.requests[1].body, server.requests[2].body
        assert refused["messages"][-1]["role"] == "assistant"  # the prefill, refused with a 400
        last = asked["messages"]
        assert [m["role"] for m in last[-2:]] == ["assistant", "user"]  # then asked to continue
        assert any("no prefill" in n for n in notices)
        then_still_valid(model, history, runtime)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_empty_reply_never_enters_the_history(provider: str) -> None:
    with served(provider, [reply(""), reply("", HIT), reply("done")]) as (server, model):
        outcome, history, runtime, notices, _ = run_turn(model)
        assert outcome.answer == "done", outcome
        assert any("empty reply" in n for n in notices)
        then_still_valid(model, history, runtime)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_two_empty_replies_end_the_turn_and_the_next_turn_works(provider: str) -> None:
    with served(provider, [reply("", HIT), reply(""), reply("")]) as (server, model):
        outcome, history, runtime, _, _ = run_turn(model)
        assert isinstance(outcome, EmptyModelReply), outcome
        assert "empty reply" in str(outcome) and "re-run the cell" in str(outcome)
        assert runtime.retrieve("hits") == [1]
        then_still_valid(model, history, runtime)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refusal_says_so(provider: str) -> None:
    with served(provider, [Reply(text="I can't help with", stop_reason="refusal")]) as (
            server, model):
        outcome, history, runtime, _, events = run_turn(model)
        assert outcome.answer.startswith("I can't help with")
        assert "declined to continue (stop reason: refusal)" in outcome.answer
        then_still_valid(model, history, runtime)


TOO_LONG = {
    "anthropic": Failure(400, "invalid_request_error",
                         "prompt is too long: 250000 tokens > 200000 maximum"),
    "openai": Failure(400, "context_length_exceeded",
                      "This model's maximum context length is 128000 tokens."),
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_context_window_error_compacts_and_retries_once(provider: str) -> None:
    first = [reply("", "print('x' * 3000)"), reply("first done")]
    summary = reply("The agent printed 3,000 x characters; no variables.")
    with served(provider, [*first, TOO_LONG[provider], summary, reply("", HIT),
                           reply("done")]) as (server, model):
        _, history, runtime, _, _ = run_turn(model)
        outcome, history, runtime, notices, _ = run_turn(model, history=history, runtime=runtime)
        assert outcome.answer == "done", outcome
        assert any("over the model's context window" in n for n in notices), notices
        assert any("1 older turn(s) folded into the summary" in n for n in notices), notices
        retried = server.requests[4].body["messages"]
        assert "x" * 3000 not in str(retried)  # the old turn was summarised for the retry
        assert "printed 3,000 x characters" in str(retried)
        assert "x" * 3000 in str(history)  # and the stored history still has it
        assert runtime.retrieve("hits") == [1]
        then_still_valid(model, history, runtime)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_second_context_window_error_ends_the_turn(provider: str) -> None:
    with served(provider, [TOO_LONG[provider]] * 2) as (server, model):
        outcome, history, runtime, _, _ = run_turn(model)
        assert isinstance(outcome, ModelResponseError) and outcome.status == 400
        assert len(server.requests) == 2
        assert history == []
        then_still_valid(model, history, runtime)


def test_a_turn_budget_stops_at_a_step_boundary() -> None:
    from cave.agent._budget import Budget, Totals

    script = [reply("", HIT, ) for _ in range(5)]
    with served("anthropic", script) as (server, model):
        runtime, history, totals = AgentRuntime(), [], Totals()
        runtime.inject("hits", [])
        agent = Agent(runtime, model, history=history, echo=False, totals=totals,
                      budget=Budget(turn_steps=2))
        with pytest.raises(BudgetReached, match="turn-steps"):
            agent.run("go")
        assert runtime.retrieve("hits") == [1, 2] and totals.steps == 2
        assert len(server.requests) == 2
        then_still_valid(model, history, runtime)
