"""Sub-agents through a real Cave kernel and the loopback Anthropic server: attenuation, asks
labelled with the sub-agent's name, no self-approval or widening, usage in the footer."""

from __future__ import annotations

import json
import sys
import time as _time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "approvals"))
from test_approvals_kernel import Rig, Widgets, clicker  # noqa: E402

from cave.testing import KernelHarness, reply  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with Rig(tmp_path_factory.mktemp("subagents-kernel")) as r:
        (r.workspace / "out" / "a").mkdir(parents=True)
        (r.workspace / "out" / "b").mkdir(parents=True)
        yield r


def sent(rig: Rig, i: int) -> str:
    return json.dumps(rig.requests[i].body)


def test_a_grandchild_given_out_under_a_child_given_out_a_writes_only_out_a(rig: Rig) -> None:
    worker_code = (
        "fs.write('out/a/ok.txt', 'yes')\n"
        "try:\n    fs.write('out/b/no.txt', 'no')\n"
        "except PermissionError as e:\n    print('refused:', e)\n"
    )
    rig.script(
        # the session's agent
        reply("", "lead = agents.spawn('lead', policy=['fs.write:out/a/**', 'fs.read:**', "
                  "'tool:agents.spawn:*'])\n"
                  "print(lead.ask('hand the writing to a worker'))"),
        # lead
        reply("", "w = agents.spawn('worker', policy=['fs.write:out/**', 'fs.read:**'])\n"
                  "print(w.ask('write the files'))"),
        # worker
        reply("", worker_code),
        reply("worker: wrote out/a/ok.txt; out/b was refused"),
        # lead, then the session's agent
        reply("lead: the worker reports out/b was refused"),
        reply("All done: only out/a was written."),
    )
    widgets = Widgets()
    cell = rig.kernel.execute(
        "%%agent\ndelegate", on_message=clicker(widgets, "Approve once", "Approve once"),
        timeout=180,
    )
    assert cell.status == "ok", cell.all_text
    assert len(rig.requests) == 6
    assert (rig.workspace / "out/a/ok.txt").read_text() == "yes"
    assert not (rig.workspace / "out/b/no.txt").exists()
    assert "refused:" in sent(rig, 3) and "can never do what its parent cannot" in sent(rig, 3)
    # Each sub-agent has its own conversation: the worker's first request holds only its prompt.
    assert "write the files" in sent(rig, 2) and "delegate" not in sent(rig, 2)
    assert "hand the writing" not in sent(rig, 2)
    texts = "\n".join(cell.texts())
    assert "tool:agents.spawn:lead" in texts and "tool:agents.spawn:worker" in texts
    assert "[lead] create sub-agent 'worker'" in texts  # the lead's ask carries its name
    assert "sub-agent worker · step 1" in texts or "sub-agent worker (step 1)" in texts
    footer = [t for t in cell.texts() if " tokens" in t and "steps" in t][-1]
    assert "lead:" in footer and "worker:" in footer


def test_a_sub_agents_ask_reaches_the_queue_with_its_name(rig: Rig) -> None:
    target = rig.outside / "helper.txt"
    setup = rig.kernel.execute(
        "import cave\n"
        f"helper = cave.Agent('helper', policy=['fs.write:{rig.outside}/**', 'fs.read:**'])"
    )
    assert setup.status == "ok", setup.all_text
    rig.script(
        reply("", f"fs.write({str(target)!r}, 'x')"),
        reply("I was not allowed."),
    )
    widgets = Widgets()
    cell = rig.kernel.execute(
        "answer = await helper.ask_async('write outside')\nprint(answer)",
        on_message=clicker(widgets, "Deny"), timeout=120,
    )
    assert cell.status == "ok", cell.all_text
    assert "I was not allowed." in cell.stdout
    assert len(widgets.shown) == 1 and not target.exists()
    texts = "\n".join(cell.texts())
    assert f"[helper] write {target}" in texts or "[helper]" in texts
    assert "a person denied it" in sent(rig, 1)
    listing = rig.approvals()
    assert "[helper]" in listing and "denied" in listing


def test_a_sub_agent_cannot_approve_its_own_asks_or_widen_its_policy(rig: Rig) -> None:
    attempts = (
        "import cave\n"
        "for what, attempt in [\n"
        "    ('db', lambda: open(str(cave.session().directory / 'approvals.db'), 'rb')),\n"
        "    ('policy', lambda: cave.session().security.with_policy("
        "cave.session().security.policy.with_fallback('allow'))),\n"
        "    ('agent', lambda: cave.Agent('wider', policy=['fs.write:**'])),\n"
        "]:\n"
        "    try:\n        attempt()\n        print(what, 'WORKED')\n"
        "    except PermissionError as e:\n        print(what, 'refused')\n"
    )
    rig.script(reply("", attempts), reply("All refused."))
    cell = rig.kernel.execute(
        "await helper.ask_async('try to widen')", on_message=clicker(Widgets()), timeout=120
    )
    assert cell.status == "ok", cell.all_text
    seen = json.dumps(rig.requests[1].body["messages"][-1])  # the step's output only
    for what in ("db", "policy", "agent"):
        assert f"{what} refused" in seen, seen
    assert "WORKED" not in seen
    policy = rig.kernel.execute("print(helper.policy.fallback)")
    assert policy.stdout.strip() == "deny"


def test_the_stop_button_stops_the_whole_tree(rig: Rig) -> None:

    rig.script(
        reply("", "spinner = agents.spawn('spinner', policy=['fs.read:**'])\n"
                  "print(spinner.ask('spin'))"),
        reply("", "spins = 0\nwhile True:\n    spins += 1"),
        reply("never sent"),
    )
    sent: dict[str, float] = {}

    def on_message(msg: dict[str, Any], kernel: KernelHarness) -> None:
        text = msg["content"].get("data", {}).get("text/plain", "")
        if "interrupt" not in sent and "sub-agent spinner (step 1)" in text:
            sent["interrupt"] = _time.monotonic()
            kernel.interrupt()

    widgets = Widgets()
    approve = clicker(widgets, "Approve once")

    def both(msg: dict[str, Any], kernel: KernelHarness) -> None:
        approve(msg, kernel)
        on_message(msg, kernel)

    cell = rig.kernel.execute("%%agent\nspin up a helper", on_message=both, timeout=60)
    assert "interrupt" in sent, cell.all_text
    assert cell.status == "error" and cell.error is not None
    assert cell.error["ename"] == "TurnInterrupted", cell.all_text
    assert _time.monotonic() - sent["interrupt"] < 15
    assert len(rig.requests) == 2  # neither agent asked the model anything more
    # Both turns are over: the sub-agent takes a new turn, the session's agent too.
    rig.script(reply("Stopped, then fine."))
    again = rig.kernel.execute(
        "import cave\nprint(cave.session().subagents.get('spinner').ask('still there?'))",
        timeout=60,
    )
    assert again.status == "ok" and "Stopped, then fine." in again.stdout, again.all_text


def test_the_stop_button_stops_a_sub_agent_a_user_cell_is_running(rig: Rig) -> None:
    setup = rig.kernel.execute("import cave\nlooper = cave.Agent('looper', policy=['fs.read:**'])")
    assert setup.status == "ok", setup.all_text
    rig.script(reply("", "laps = 0\nwhile True:\n    laps += 1"), reply("never sent"))
    sent: dict[str, float] = {}

    def on_message(msg: dict[str, Any], kernel: KernelHarness) -> None:
        text = msg["content"].get("data", {}).get("text/plain", "")
        if "interrupt" not in sent and "sub-agent looper (step 1)" in text:
            sent["interrupt"] = _time.monotonic()
            kernel.interrupt()

    cell = rig.kernel.execute("await looper.ask_async('loop')", on_message=on_message, timeout=60)
    assert "interrupt" in sent, cell.all_text
    assert cell.status == "error", cell.all_text
    assert len(rig.requests) == 1
    rig.script(reply("Back."))
    again = rig.kernel.execute("print(looper.ask('there?'))", timeout=60)
    assert again.status == "ok" and "Back." in again.stdout, again.all_text
