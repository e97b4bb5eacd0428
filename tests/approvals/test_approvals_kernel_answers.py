"""Ask timeouts and ``human.ask`` answers through a real Cave kernel, driven over ZMQ.

The same rig as ``test_approvals_kernel``: the loopback Anthropic server replays the agent's code
through the real SDK; the widget's text box is filled with the ``comm_msg`` (``update``) a
frontend sends while the person types, then Send is clicked with the click's ``comm_msg``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_approvals_kernel import Rig, Widgets, _cli, _write_step, controller

from cave.testing import CLICK, KernelHarness, reply, request_ids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with Rig(tmp_path_factory.mktemp("approvals-answers")) as r:
        yield r


def _audit(rig: Rig) -> list[dict[str, Any]]:
    lines = (rig.session_dir / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _ask_step(question: str) -> str:
    return f"a = human.ask({question!r})\nprint('the answer was:', a)"


def _text_box(widgets: Widgets, model_id: str) -> str:
    todo = [model_id]
    while todo:
        comm_id = todo.pop()
        state = widgets.states.get(comm_id, {})
        if state.get("_model_name") == "TextareaModel":
            return comm_id
        todo += [c.removeprefix("IPY_MODEL_") for c in state.get("children", [])]
    raise AssertionError(f"no text box under {model_id}")


def typist(widgets: Widgets, text: str | None) -> Callable[[dict[str, Any], KernelHarness], None]:
    """Types ``text`` into the first question's box and clicks Send (None: clicks Decline)."""
    done: list[str] = []

    def on_message(msg: dict[str, Any], kernel: KernelHarness) -> None:
        widgets.see(msg)
        if widgets.shown and not done:
            rid, model_id = widgets.shown[0]
            done.append(rid)
            if text is None:
                kernel.comm_msg(widgets.button(model_id, "Decline"), CLICK)
                return
            update = {"method": "update", "state": {"value": text}, "buffer_paths": []}
            kernel.comm_msg(_text_box(widgets, model_id), update)
            kernel.comm_msg(widgets.button(model_id, "Send"), CLICK)

    return on_message


def test_a_policy_timeout_expires_and_the_agent_sees_permission_error(rig: Rig) -> None:
    capability = f"fs.write:{rig.outside}/timed-*"
    setup = rig.kernel.execute(f"%cave policy ask {capability} timeout=1")
    assert setup.status == "ok", setup.all_text
    assert f"{capability} timeout=1 on_timeout=deny" in setup.stdout
    target = rig.outside / "timed-out.txt"
    rig.script(reply("", _write_step(target)), reply("Nobody approved it in time."))
    widgets = Widgets()
    try:
        cell = rig.kernel.execute(
            "%%agent\nwrite", on_message=lambda m, _k: widgets.see(m), timeout=90
        )
    finally:
        rig.kernel.execute(f"%cave policy remove {capability}")
    assert cell.status == "ok", cell.all_text
    assert not target.exists()
    seen = rig.tool_results()
    assert "PermissionError" in seen and "policy's timeout of 1 s" in seen
    assert len(rig.requests) == 2  # the model was told, once
    ((rid, _model),) = widgets.shown
    texts = "\n".join(cell.texts())
    assert "then deny" in texts  # the widget said when, before it happened
    assert re.search(r"expired by cave via timeout at .*no decision within 1 s", texts)
    listing = rig.approvals()
    assert re.search(rf"{rid} .* expired", listing), listing
    assert "no decision within 1 s; the policy says deny on timeout" in listing
    records = _audit(rig)
    decided = [r for r in records if r["kind"] == "approval.decided" and r["id"] == rid]
    assert decided[0]["state"] == "expired" and decided[0]["channel"] == "timeout"
    assert decided[0]["timeout_s"] == 1 and decided[0]["on_timeout"] == "deny"
    approval = [r for r in records if r["kind"] == "approval" and r["id"] == rid]
    assert approval[0]["decision"] == "expired"


def test_human_ask_answered_in_the_widgets_text_box(rig: Rig) -> None:
    typed = "Use the 2019 sheet, it's the clean one"
    rig.script(reply("", _ask_step("Which sheet?")), reply("Thanks."))
    widgets = Widgets()
    cell = rig.kernel.execute("%%agent\nask me", on_message=typist(widgets, typed), timeout=90)
    assert cell.status == "ok", cell.all_text
    assert f"the answer was: {typed}" in rig.tool_results()
    ((rid, _model),) = widgets.shown
    texts = "\n".join(cell.texts())
    assert f"[cave] approval {rid}: human:ask" in texts and "Which sheet?" in texts
    assert re.search(rf"answered \({len(typed)} characters\) by \S+ via widget", texts)
    listing = rig.approvals()
    assert re.search(rf"{rid} .* answered", listing) and typed not in listing
    raw = (rig.session_dir / "audit.jsonl").read_text()
    assert typed not in raw  # only its length and hash
    decided = [r for r in _audit(rig) if r["kind"] == "approval.decided" and r["id"] == rid]
    assert decided[0]["answer_sha256"] == hashlib.sha256(typed.encode()).hexdigest()
    asked = [r for r in _audit(rig) if r["kind"] == "human.ask" and r["id"] == rid]
    assert asked[0]["answered"] is True and asked[0]["answer_chars"] == len(typed)


def test_human_ask_with_a_timeout_expires_and_the_agent_sees_permission_error(rig: Rig) -> None:
    step = "a = human.ask('Which sheet?', timeout=1)\nprint('the answer was:', a)"
    rig.script(reply("", step), reply("Nobody answered."))
    widgets = Widgets()
    cell = rig.kernel.execute("%%agent\nask", on_message=lambda m, _k: widgets.see(m), timeout=90)
    assert cell.status == "ok", cell.all_text
    seen = rig.tool_results()
    assert "PermissionError" in seen and "nobody answered within 1 s" in seen
    assert "the answer was" not in seen
    ((rid, _model),) = widgets.shown
    texts = "\n".join(cell.texts())
    assert "then deny" in texts  # the widget said when, before it happened
    assert re.search(r"expired by cave via timeout at .*no decision within 1 s", texts)
    asked = [r for r in _audit(rig) if r["kind"] == "human.ask" and r["id"] == rid]
    assert asked[0]["answered"] is False and asked[0]["timeout_s"] == 1


def test_human_ask_declined_raises_permission_error(rig: Rig) -> None:
    rig.script(reply("", _ask_step("May I?")), reply("You declined."))
    cell = rig.kernel.execute(
        "%%agent\nask", on_message=typist(Widgets(), None), timeout=90
    )
    assert cell.status == "ok", cell.all_text
    seen = rig.tool_results()
    assert "PermissionError" in seen and "declined it" in seen
    assert "the answer was" not in seen


def test_human_ask_answered_from_the_cli(rig: Rig) -> None:
    rig.script(reply("", _ask_step("How many rows?")), reply("ok"))
    answered: list[Any] = []

    def from_terminal(msg: dict[str, Any], kernel: KernelHarness) -> None:
        ids = request_ids([msg])
        if ids and not answered:
            answered.append(_cli(rig.session_dir, "answer", ids[0], "about", "1,200"))

    cell = rig.kernel.execute("%%agent\nask", on_message=from_terminal, timeout=90)
    assert cell.status == "ok", cell.all_text
    assert answered[0].returncode == 0, answered[0].stderr
    assert "the answer was: about 1,200" in rig.tool_results()
    assert "answered (11 characters) by" in "\n".join(cell.texts())


def test_human_ask_answered_over_the_control_channel(rig: Rig) -> None:
    rig.script(reply("", _ask_step("Colour?")), reply("ok"))
    replies: list[dict[str, Any]] = []
    over_control = controller(lambda rid: {"id": rid, "answer": "teal"}, replies)
    cell = rig.kernel.execute("%%agent\nask", on_message=over_control, timeout=90)
    assert cell.status == "ok", cell.all_text
    assert replies[0]["content"]["status"] == "ok", replies[0]["content"]
    assert "teal" not in json.dumps(replies[0]["content"])
    assert "the answer was: teal" in rig.tool_results()


def test_human_ask_on_a_console_takes_a_line_from_stdin(rig: Rig) -> None:
    rig.script(reply("", _ask_step("Name?")), reply("ok"))
    prompts: list[str] = []

    def console(content: dict[str, Any]) -> str:
        prompts.append(content["prompt"])
        return "Ada Lovelace"

    cell = rig.kernel.execute("%%agent\nask", stdin=console, timeout=90)
    assert cell.status == "ok", cell.all_text
    assert prompts[0].startswith("[cave] the agent asks (") and "Name?" in prompts[0]
    assert "empty line declines" in prompts[0]
    assert "the answer was: Ada Lovelace" in rig.tool_results()
