"""The turn loop without a kernel: real runtime, scripted model (a fixture, not a model)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cave._errors import MaxStepsReached, ModelResponseError, TurnInterrupted
from cave.agent._events import CodeFinished, CodeStarted, ModelCalled, TextDelta, TurnFinished
from cave.agent._loop import Agent, AgentSettings
from cave.runtime._namespace import AgentRuntime
from cave.testing._script import Failure, Reply, reply
from cave.testing._scripted_model import ScriptedModel


def _valid_history(history: list[dict[str, Any]]) -> None:
    """What the Messages API requires: alternating roles, every tool_use answered next message."""
    assert history[0]["role"] == "user"
    for prev, nxt in zip(history, history[1:], strict=False):
        assert prev["role"] != nxt["role"], "roles must alternate"
    for i, message in enumerate(history):
        uses = [b["id"] for b in message["content"] if b.get("type") == "tool_use"]
        if uses:
            answered = {
                b["tool_use_id"]
                for b in history[i + 1]["content"]
                if b.get("type") == "tool_result"
            }
            assert set(uses) <= answered


def test_a_turn_runs_code_and_returns_the_answer() -> None:
    runtime = AgentRuntime()
    runtime.inject("numbers", [3, 1, 2])
    model = ScriptedModel(
        [
            reply("Sorting.", "ordered = sorted(numbers)\nprint(ordered)"),
            reply("They are [1, 2, 3]."),
        ]
    )
    events: list[Any] = []
    result = Agent(runtime, model, echo=False).run("sort them", events.append)

    assert result.answer == "They are [1, 2, 3]."
    assert result.steps == 2
    assert runtime.retrieve("ordered") == [1, 2, 3]
    kinds = [type(e) for e in events]
    assert kinds.count(ModelCalled) == 2 and CodeStarted in kinds and kinds[-1] is TurnFinished
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).startswith("Sorting.")
    finished = next(e for e in events if isinstance(e, CodeFinished))
    assert "[1, 2, 3]" in finished.result.for_model()
    # The model saw the code's output in the second request.
    second = model.requests[1]
    tool_results = [
        b for m in second.messages for b in m["content"] if b.get("type") == "tool_result"
    ]
    assert "[1, 2, 3]" in str(tool_results[-1]["content"])


def test_history_stays_valid_and_variables_persist_across_turns() -> None:
    runtime = AgentRuntime()
    model = ScriptedModel(
        [reply("", "x = 41"), reply("Set."), reply("", "y = x + 1"), reply("y is 42.")]
    )
    history: list[dict[str, Any]] = []
    Agent(runtime, model, history=history, echo=False).run("set x")
    Agent(runtime, model, history=history, echo=False).run("add one")
    assert runtime.retrieve("y") == 42
    _valid_history(history)
    # The second turn's prompt tells the model which variables exist.
    assert "x: int" in str(model.requests[2].messages[-1])


def test_max_steps_stops_the_turn_and_leaves_a_valid_history() -> None:
    runtime = AgentRuntime()
    model = ScriptedModel([reply("", "a = 1"), reply("", "a += 1"), reply("", "a += 1")])
    history: list[dict[str, Any]] = []
    with pytest.raises(MaxStepsReached, match="--max-steps"):
        Agent(runtime, model, history=history, settings=AgentSettings(max_steps=2), echo=False).run(
            "count"
        )
    assert runtime.retrieve("a") == 2
    _valid_history(history)


def test_a_step_that_fails_inside_cave_still_answers_every_tool_call() -> None:
    """A refusal around the code (the guard's fail-closed check, say) ends the turn with an error;
    the history must still answer each tool_use, or every later request is a 400 and the
    session is stuck (found when the loopback server began to enforce the API's rule)."""

    class Refused(RuntimeError):
        pass

    refuse = [True]

    def code_context() -> Any:
        import contextlib

        @contextlib.contextmanager
        def ctx() -> Any:
            if refuse[0]:
                raise Refused("the guard refused the step")
            yield

        return ctx()

    model = ScriptedModel([reply("", "a = 1", "b = 2"), reply("", "c = 3"), reply("Done.")])
    history: list[dict[str, Any]] = []
    runtime = AgentRuntime()
    with pytest.raises(Refused):
        Agent(runtime, model, history=history, code_context=code_context, echo=False).run("go")
    _valid_history(history)
    assert "Refused: the guard refused the step" in str(history[-1])
    refuse[0] = False
    Agent(runtime, model, history=history, code_context=code_context, echo=False).run("again")
    _valid_history(history)
    assert runtime.retrieve("c") == 3


def test_a_failed_first_call_forgets_the_prompt() -> None:
    model = ScriptedModel([Failure(400, "invalid_request_error", "bad")])
    history: list[dict[str, Any]] = []
    with pytest.raises(ModelResponseError, match="invalid_request_error"):
        Agent(AgentRuntime(), model, history=history, echo=False).run("hello")
    assert history == []


def test_malformed_tool_input_is_reported_to_the_model() -> None:
    model = ScriptedModel([Reply(raw_tool_input='{"cod": 1}'), reply("Sorry, fixed.")])
    history: list[dict[str, Any]] = []
    result = Agent(AgentRuntime(), model, history=history, echo=False).run("go")
    assert result.answer == "Sorry, fixed."
    error_result = [b for b in history[2]["content"] if b.get("type") == "tool_result"][0]
    assert error_result.get("is_error") is True
    assert "rejected" in str(error_result["content"]).lower()


def test_cancel_from_another_thread_stops_a_running_loop() -> None:
    runtime = AgentRuntime()
    model = ScriptedModel([reply("", "n = 0\nwhile True:\n    n += 1"), reply("never")])
    history: list[dict[str, Any]] = []
    agent = Agent(runtime, model, history=history, echo=False)
    started = threading.Event()

    def on_event(event: Any) -> None:
        if isinstance(event, CodeStarted):
            started.set()

    errors: list[BaseException] = []

    def run() -> None:
        try:
            agent.run("loop", on_event)
        except BaseException as exc:  # noqa: B036 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(10)
    time.sleep(0.2)
    t0 = time.monotonic()
    agent.cancel()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - t0 < 1.0
    assert len(errors) == 1 and isinstance(errors[0], TurnInterrupted)
    assert runtime.retrieve("n") > 0  # what ran before the interrupt is kept
    _valid_history(history)
    assert "stopped" in str(history[-1]["content"])


def test_usage_is_summed_and_audited() -> None:
    records: list[tuple[str, dict[str, Any]]] = []

    class Audit:
        def record(self, kind: str, /, **fields: Any) -> None:
            records.append((kind, fields))

    model = ScriptedModel(
        [
            Reply(code=("z = 1",), input_tokens=100, output_tokens=10),
            Reply(text="done", input_tokens=120, output_tokens=5),
        ]
    )
    result = Agent(AgentRuntime(), model, audit=Audit(), echo=False).run("go")
    assert (result.usage.input_tokens, result.usage.output_tokens) == (220, 15)
    assert [k for k, _ in records] == ["model_call", "code", "model_call", "turn"]
    assert records[1][1]["code"] == "z = 1"
