"""Agent cells end to end: a real Cave kernel over ZMQ, the real anthropic SDK, our loopback server.

The server replays a script of replies (a fixture standing in for Claude) and records every request,
so the tests can check what the model was shown, not only what the cell printed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cave.testing._anthropic_server import AnthropicServer
from cave.testing._kernel_harness import KernelHarness
from cave.testing._script import Failure, Reply, reply
from cave.testing._scripted_kernel import ScriptedKernel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cave() -> Iterator[ScriptedKernel]:
    with ScriptedKernel() as scripted:
        yield scripted


def _bodies(scripted: ScriptedKernel) -> list[str]:
    return [json.dumps(r.body) for r in scripted.requests]


def test_dataframe_turn_shows_manifest_not_data_and_returns_live_result(
    cave: ScriptedKernel,
) -> None:
    setup = cave.execute(
        "import numpy as np, pandas as pd, cave\n"
        "rng = np.random.default_rng(0)\n"
        "n = 100_000\n"
        "sales = pd.DataFrame({'order_id': [f'row-{i:06d}' for i in range(n)],\n"
        "    'region': rng.choice(['north', 'south', 'east', 'west'], n),\n"
        "    'month': rng.integers(1, 13, n), 'amount': rng.gamma(2.0, 50.0, n)})\n"
        "cave.inject('sales', sales, description='daily sales')\n"
        "assert cave.retrieve('sales') is sales\n"
    )
    assert setup.status == "ok", setup.all_text
    cave.script(
        reply(
            "Let me look at monthly totals.",
            "monthly = sales.pivot_table(index='month', columns='region',\n"
            "                            values='amount', aggfunc='sum')\n"
            "print(monthly.shape)",
        ),
        reply(
            "",
            "growth = (monthly.iloc[-1] / monthly.iloc[0] - 1).sort_values()\n"
            "result = growth\nprint(growth.round(3).to_dict())",
        ),
        reply("The **fastest-growing** region is `" + "west" + "` (see `result`)."),
    )
    cell = cave.execute("%%agent -o result\nwhich region grew fastest?", timeout=120)
    assert cell.status == "ok", cell.all_text

    bodies = _bodies(cave)
    assert len(bodies) == 3
    first = cave.requests[0].body
    system = json.dumps(first["system"])
    assert "sales" in system and "daily sales" in system
    assert "100000" in system.replace(",", "").replace("_", "")
    for column in ("order_id", "region", "month", "amount"):
        assert column in system
    # Values never enter the prompt beyond the manifest's sample rows.
    seen_rows = set(re.findall(r"row-\d{6}", "".join(bodies)))
    assert 0 < len(seen_rows) <= 5, seen_rows
    # The model saw the printed output of step 1 in request 2.
    assert "(12, 4)" in bodies[1]

    # The cell showed the code, its output, the answer as Markdown and a usage footer.
    assert any("pivot_table" in t for t in cell.texts())
    assert "(12, 4)" in cell.stdout
    markdown = cell.texts("text/markdown")
    assert any("fastest-growing" in t for t in markdown)
    footer = [t for t in cell.texts() if "out tokens" in t]
    assert footer and "3 steps" in footer[-1]
    tokens_in = int(re.search(r"([\d,]+) in /", footer[-1]).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert tokens_in > 0

    check = cave.execute(
        "import pandas as pd\n"
        "assert result is cave.retrieve('result')\n"
        "assert isinstance(result, pd.Series) and len(result) == 4\n"
        "print(result.index[-1])"
    )
    assert check.status == "ok", check.all_text


def test_variables_persist_between_turns_and_one_line_agent_works(cave: ScriptedKernel) -> None:
    cave.script(
        reply("", "counter = 41"),
        reply("Set counter."),
        reply("", "counter += 1\nprint(counter)"),
        reply("Now 42."),
    )
    assert cave.execute("%agent set a counter to 41").status == "ok"
    second = cave.execute("%agent add one")
    assert second.status == "ok", second.all_text
    assert "42" in second.stdout
    # The second turn continued the same conversation.
    messages = cave.requests[-1].body["messages"]
    assert any("set a counter" in json.dumps(m) for m in messages)


def test_retries_529_and_500_then_succeeds(cave: ScriptedKernel) -> None:
    cave.script(
        Failure(529, "overloaded_error", "Overloaded"),
        Failure(500, "api_error", "boom"),
        reply("Fine now."),
    )
    cell = cave.execute("%agent hello", timeout=60)
    assert cell.status == "ok", cell.all_text
    assert len(cave.requests) == 3
    assert any("Fine now." in t for t in cell.texts("text/markdown"))


def test_persistent_server_error_is_reported_and_kernel_survives(cave: ScriptedKernel) -> None:
    cave.script(*[Failure(400, "invalid_request_error", "messages: bad shape")] * 2)
    cell = cave.execute("%agent hello", timeout=60)
    assert cell.status == "error"
    assert cell.error is not None and cell.error["ename"] == "ModelResponseError"
    assert "invalid_request_error" in cell.error["evalue"]
    assert cave.execute("1 + 1").status == "ok"


def test_malformed_tool_input_code_error_and_huge_output(cave: ScriptedKernel) -> None:
    cave.script(
        Reply(raw_tool_input='{"code": 12'),
        reply("", "1 / 0"),
        reply("", "print('x' * 10_000_000)"),
        reply("Done despite the trouble."),
    )
    cell = cave.execute("%agent try things", timeout=120)
    assert cell.status == "ok", cell.all_text
    assert "unusable tool input" in cell.stderr
    assert "ZeroDivisionError" in cell.stderr
    # The notebook got a bounded amount of the 10 MB, with a note.
    assert len(cell.stdout) < 1_000_000
    assert "truncated" in cell.stdout + cell.stderr
    bodies = _bodies(cave)
    assert "ZeroDivisionError" in bodies[2]
    assert "omitted" in bodies[3] and len(bodies[3]) < 200_000
    assert cave.execute("print('alive')").stdout.strip() == "alive"


def test_interrupt_stops_an_infinite_loop_within_a_second(cave: ScriptedKernel) -> None:
    cave.script(reply("Looping.", "spins = 0\nwhile True:\n    spins += 1"), reply("never sent"))
    sent: dict[str, float] = {}

    def interrupt_when_code_shows(msg: dict[str, Any], kernel: KernelHarness) -> None:
        data = msg["content"].get("data", {})
        if "interrupt" not in sent and "while True" in data.get("text/plain", ""):
            time.sleep(0.3)
            sent["interrupt"] = time.monotonic()
            kernel.interrupt()

    cell = cave.execute("%agent spin", timeout=30, on_message=interrupt_when_code_shows)
    stopped_after = time.monotonic() - sent["interrupt"]
    assert cell.status == "error"
    assert cell.error is not None and cell.error["ename"] == "TurnInterrupted"
    assert "during step 1" in cell.error["evalue"]
    assert stopped_after < 5, (
        stopped_after
    )  # the latency itself is measured in benchmarks/bench_kernel.py
    assert len(cave.requests) == 1  # nothing more was asked of the model
    after = cave.execute("import cave\nprint(cave.retrieve('spins') > 0)")
    assert after.stdout.strip() == "True", after.all_text
    # The conversation stays valid: the next turn is accepted and records the interruption.
    cave.script(reply("Stopped as asked."))
    assert cave.execute("%agent ok?").status == "ok"
    assert "stopped" in json.dumps(cave.requests[-1].body["messages"]).lower()


def test_missing_key_says_how_to_set_one_and_kernel_stays_usable(tmp_path: Path) -> None:
    with KernelHarness(cwd=tmp_path) as kernel:
        cell = kernel.execute("%%agent\nhello")
        assert cell.status == "error"
        assert cell.error is not None and cell.error["ename"] == "MissingAPIKey"
        text = cell.all_text
        assert "ANTHROPIC_API_KEY" in text and "ANTHROPIC_BASE_URL" in text
        assert "Traceback" not in "".join(cell.error["traceback"])
        assert kernel.execute("print(6 * 7)").stdout.strip() == "42"


def test_bad_agent_options_give_usage(cave: ScriptedKernel) -> None:
    cell = cave.execute("%%agent --max-steps lots\nhi")
    assert cell.status == "error"
    assert "usage: %%agent" in cell.all_text


def test_interrupt_while_the_model_streams_stops_the_turn(tmp_path: Path) -> None:
    slow = AnthropicServer([reply("word " * 400)], latency=0.05)  # ~25 chunks per second
    with (
        slow,
        KernelHarness(
            cwd=tmp_path,
            env={"ANTHROPIC_BASE_URL": slow.base_url, "ANTHROPIC_API_KEY": "sk-ant-test"},
        ) as kernel,
    ):
        sent: list[float] = []

        def interrupt_on_first_text(msg: dict[str, Any], k: KernelHarness) -> None:
            if not sent and "word" in msg["content"].get("data", {}).get("text/plain", ""):
                sent.append(time.monotonic())
                k.interrupt()

        cell = kernel.execute("%agent talk", timeout=60, on_message=interrupt_on_first_text)
        assert sent, "no streamed text arrived"
        assert time.monotonic() - sent[0] < 5  # latency measured in benchmarks, not here
        assert cell.error is not None and cell.error["ename"] == "TurnInterrupted"
        shown = max((t for t in cell.texts() if "word" in t), key=len)
        assert shown.count("word") < 400  # the stream really was cut short
        assert kernel.execute("print('next')").stdout.strip() == "next"
