"""Compaction elides old outputs oldest-first, keeps recent turns whole, never edits the history."""

from __future__ import annotations

import copy
from typing import Any

from cave.agent._compaction import compact, estimate_tokens
from cave.agent._loop import Agent, AgentSettings
from cave.runtime._namespace import AgentRuntime
from cave.testing._script import reply
from cave.testing._scripted_model import ScriptedModel


def _turn(n: int, output: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "text", "text": f"question {n}"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": f"t{n}",
                    "name": "python",
                    "input": {"code": f"x{n} = 1"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": f"t{n}",
                    "content": [{"type": "text", "text": output}],
                }
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": f"answer {n}"}]},
    ]


def test_under_budget_nothing_changes() -> None:
    history = _turn(1, "small")
    assert compact(history, 10_000) == history
    assert compact(history, None) == history


def test_old_outputs_go_first_and_recent_turns_stay_whole() -> None:
    history = [m for n in range(6) for m in _turn(n, f"out{n} " + "y" * 8000)]
    original = copy.deepcopy(history)
    budget = estimate_tokens(history) // 2
    compacted = compact(history, budget)

    assert history == original  # the stored conversation is never edited
    assert estimate_tokens(compacted) <= budget
    texts = [
        b["content"][0]["text"]
        for m in compacted
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]
    assert "elided" in texts[0]  # oldest first
    assert texts[-1].startswith("out5") and texts[-2].startswith("out4")  # last 2 turns whole
    # Everything else (prompts, code, answers, ids) is unchanged, so the API still accepts it.
    for a, b in zip(compacted, original, strict=True):
        assert a["role"] == b["role"] and len(a["content"]) == len(b["content"])


def test_stops_eliding_as_soon_as_it_fits() -> None:
    history = [m for n in range(6) for m in _turn(n, "z" * 8000)]
    budget = estimate_tokens(history) - 1000  # one output's worth over
    texts = [
        b["content"][0]["text"]
        for m in compact(history, budget)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]
    assert sum("elided" in t for t in texts) == 1


def test_the_loop_sends_compacted_history_but_keeps_it_whole() -> None:
    runtime = AgentRuntime()
    big = "print('w' * 12000)"
    model = ScriptedModel(
        [
            reply("", big),
            reply("one"),
            reply("", big),
            reply("two"),
            reply("", big),
            reply("three"),
            reply("", "print('x')"),
            reply("four"),
        ]
    )
    history: list[dict[str, Any]] = []
    settings = AgentSettings(context_budget_tokens=8000)  # the last two turns fit
    for prompt in ("a", "b", "c", "d"):
        Agent(runtime, model, history=history, settings=settings, echo=False).run(prompt)
    last_request = model.requests[-1]
    sent = str(last_request.messages)
    assert "elided" in sent
    assert "w" * 12000 in str(history)  # the stored history still has every output
