"""Budgets, compaction and model faults in a real Cave kernel over ZMQ (real anthropic SDK,
loopback server with fault injection). One kernel for the module; each test scripts its replies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from cave.testing._script import Failure, Reply, reply
from cave.testing._scripted_kernel import ScriptedKernel

pytestmark = pytest.mark.slow

HIT = "hits.append(len(hits) + 1)\nprint('hit', len(hits))"


@pytest.fixture(scope="module")
def cave() -> Iterator[ScriptedKernel]:
    with ScriptedKernel() as scripted:
        ok(scripted, "import cave\ncave.inject('hits', [])\n%cave budget reset-totals")
        yield scripted


def ok(cave: ScriptedKernel, code: str) -> str:
    cell = cave.execute(code, timeout=60)
    assert cell.status == "ok", cell.all_text
    return str(cell.all_text)


def reset(cave: ScriptedKernel) -> None:
    ok(cave, "cave.retrieve('hits').clear()\n%cave reset\n%cave budget reset-totals "
             "turn-steps=none turn-tokens=none turn-cost=none session-steps=none "
             "session-tokens=none session-cost=none")


def hits(cave: ScriptedKernel) -> str:
    return ok(cave, "print(cave.retrieve('hits'))").strip().splitlines()[-1]


@pytest.mark.parametrize("limit,value,after", [
    ("turn-steps", "2", 2),
    ("turn-tokens", "1", 1),
    ("turn-cost", "0.000001", 1),
    ("session-tokens", "1", 1),
    ("session-cost", "0.000001", 1),
])
def test_each_limit_ends_the_turn_at_a_step_boundary(
        cave: ScriptedKernel, limit: str, value: str, after: int) -> None:
    reset(cave)
    ok(cave, f"%cave budget {limit}={value}")
    cave.script(*[reply("", HIT) for _ in range(5)])
    cell = cave.execute("%agent keep going", timeout=60)
    assert cell.status == "error" and cell.error["ename"] == "BudgetReached", cell.all_text
    assert limit in cell.error["evalue"] and f"%cave budget {limit}=NEW" in cell.error["evalue"]
    assert len(cave.requests) == after  # no call past the limit
    assert hits(cave) == str(list(range(1, after + 1)))  # each step that ran, ran whole
    cave.script(reply("Carrying on."))
    ok(cave, f"%cave budget {limit}=none")
    assert "Carrying on." in ok(cave, "%agent continue")  # the conversation is still valid


def test_session_limits_count_across_turns_and_the_footer_shows_them(cave: ScriptedKernel) -> None:
    reset(cave)
    ok(cave, "%cave budget session-steps=3")
    cave.script(reply("", HIT), reply("one"), reply("two"), reply("never"))
    first = ok(cave, "%agent a")
    assert re.search(r"session 2 steps of 3", first), first
    assert "two" in ok(cave, "%agent b")
    cell = cave.execute("%agent c", timeout=60)
    assert cell.error is not None and "session-steps" in cell.error["evalue"]
    assert "spent 3 of 3" in cell.error["evalue"]
    shown = ok(cave, "%cave budget")
    assert "3 turns, 3 steps" in shown and "session-steps   3" in shown


def test_max_cost_option_limits_one_cell(cave: ScriptedKernel) -> None:
    reset(cave)
    cave.script(reply("", HIT), reply("", HIT), reply("done"))
    cell = cave.execute("%%agent --max-cost 0.000001\ngo", timeout=60)
    assert cell.error is not None and "turn-cost" in cell.error["evalue"]
    assert "turn-cost  " in ok(cave, "%cave budget") and "no limit" in ok(cave, "%cave budget")


def test_budget_and_totals_survive_a_checkpoint_round_trip(cave: ScriptedKernel) -> None:
    reset(cave)
    ok(cave, "%cave budget session-cost=5 turn-tokens=200000")
    cave.script(reply("", HIT), reply("done"))
    ok(cave, "%agent go")
    before = ok(cave, "%cave budget")
    ok(cave, "%checkpoint save budgeted")
    ok(cave, "%cave budget session-cost=none turn-tokens=none reset-totals")
    ok(cave, "%checkpoint restore budgeted")
    after = ok(cave, "%cave budget")
    assert after == before and "$5.0000" in after and "200,000" in after
    assert "1 turns, 2 steps" in after


def test_a_stream_reset_mid_reply_is_retried_and_its_code_runs_once(cave: ScriptedKernel) -> None:
    reset(cave)
    broken = Reply(text="Counting. " * 5, code=(HIT,), fault="reset", fault_after=3)
    cave.script(broken, reply("Counting.", HIT), reply("Counted."))
    text = ok(cave, "%agent count")
    assert "broke during the reply" in text and "retrying" in text
    assert "could not reach" not in text
    assert "Counted." in text and hits(cave) == "[1]"


def test_a_context_window_error_compacts_and_retries(cave: ScriptedKernel) -> None:
    reset(cave)
    cave.script(reply("", "print('big ' * 2000)"), reply("first"))
    ok(cave, "%agent one")
    cave.script(Failure(400, "invalid_request_error",
                        "prompt is too long: 250000 tokens > 200000 maximum"),
                reply("Earlier the agent printed 'big' 2,000 times."), reply("", HIT),
                reply("second"))
    text = ok(cave, "%agent two")
    assert "over the model's context window" in text and "folded into the summary" in text
    assert "second" in text and hits(cave) == "[1]"
    assert "big big" not in str(cave.requests[-1].body)
    context = ok(cave, "%cave context")
    assert "summary: covers the first" in context
    assert "counted by the provider's token-counting endpoint" in context
    records = [json.loads(line) for line in
               (cave.session_dir / "audit.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "compaction" and r.get("forced") for r in records)
