"""Approvals through a real Cave kernel, driven over ZMQ as JupyterLab would drive it.

The agent's code (replayed by the loopback Anthropic server through the real SDK) writes outside
the workspace; the policy says ``ask``; the widget arrives as ``comm_open`` messages on IOPub, and
the test answers with the same ``comm_msg`` a button click sends, or from the CLI, the control
channel, or stdin. Each test checks what the model was shown afterwards, and that nothing ran
twice.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cave.testing import (
    ApprovalWidgets,
    KernelHarness,
    ScriptedKernel,
    approval_clicker,
    reply,
    request_ids,
)

pytestmark = pytest.mark.slow



class Rig(ScriptedKernel):
    """A scripted Cave kernel and a directory outside its workspace, where every write asks."""

    def __init__(self, root: Path) -> None:
        self.outside = root / "outside"
        workspace = root / "workspace"
        for d in (self.outside, workspace):
            d.mkdir(parents=True, exist_ok=True)
        # Pinned to where ``session_dir`` says: the kernel inherits the environment, and an
        # exported CAVE_SESSION_DIR would otherwise move the session (and these tests) into it.
        super().__init__(workspace=workspace, env={"CAVE_SESSION_DIR": str(workspace / ".cave")})

    def tool_results(self) -> str:
        """What the model was sent back after running code, in the last request."""
        return json.dumps(self.requests[-1].body["messages"][-1])

    def approvals(self) -> str:
        cell = self.kernel.execute("%approvals")
        assert cell.status == "ok", cell.all_text
        return cell.stdout


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with Rig(tmp_path_factory.mktemp("approvals-kernel")) as r:
        yield r


def _write_step(path: Path, text: str = "hello") -> str:
    return (
        "runs = globals().get('runs', 0) + 1\n"
        f"n = fs.write({str(path)!r}, {text!r})\n"
        "print('wrote', n, 'bytes; runs =', runs)"
    )


Widgets = ApprovalWidgets
clicker = approval_clicker


def test_approve_once_click_writes_once_and_the_agent_continues(rig: Rig) -> None:
    target = rig.outside / "approved.txt"
    rig.script(reply("Writing it.", _write_step(target)), reply("Done: the file is written."))
    widgets = Widgets()
    cell = rig.kernel.execute(
        "%%agent\nwrite hello outside", on_message=clicker(widgets, "Approve once"), timeout=90
    )
    assert cell.status == "ok", cell.all_text
    assert target.read_text() == "hello"
    assert len(rig.requests) == 2  # one model call per step: nothing asked twice
    assert "wrote 5 bytes; runs = 1" in rig.tool_results()
    runs = rig.kernel.execute("import cave; print(cave.retrieve('runs'))")
    assert runs.stdout.strip() == "1", runs.all_text  # the code block ran exactly once

    # The widget showed what was asked, then who decided, and stopped being clickable.
    (rid, _model), = widgets.shown
    texts = "\n".join(cell.texts())
    assert f"[cave] approval {rid}: fs.write:{target}" in texts
    assert "bytes: 5" in texts and "sha256: 2cf24dba5fb0a30e" in texts and "| hello" in texts
    assert f"asked by: n = fs.write({str(target)!r}, 'hello')" in texts  # why: the agent's line
    buttons = [c for c, s in widgets.states.items() if s.get("_model_name") == "ButtonModel"]
    updates = [
        m["content"]
        for m in cell.of_type("comm_msg")
        if m["content"]["comm_id"] in buttons
        and m["content"]["data"].get("state", {}).get("disabled")
    ]
    assert len(updates) == 3
    assert re.search(r"approved once by \S+ via widget at", texts)
    assert "Done: the file is written." in "\n".join(cell.texts("text/markdown"))
    listing = rig.approvals()
    assert rid in listing and "approved once" in listing


def test_deny_raises_permission_error_in_the_agents_code(rig: Rig) -> None:
    target = rig.outside / "denied.txt"
    rig.script(reply("", _write_step(target)), reply("I was not allowed to write it."))
    cell = rig.kernel.execute(
        "%%agent\nwrite it", on_message=clicker(Widgets(), "Deny"), timeout=90
    )
    assert cell.status == "ok", cell.all_text
    assert not target.exists()
    seen = rig.tool_results()
    assert "PermissionError" in seen and "a person denied it" in seen
    assert len(rig.requests) == 2


def test_approve_for_session_does_not_ask_again(rig: Rig) -> None:
    target = rig.outside / "session.txt"
    rig.script(
        reply("", _write_step(target, "one")),
        reply("", _write_step(target, "two")),
        reply("Wrote twice."),
    )
    widgets = Widgets()
    cell = rig.kernel.execute(
        "%%agent\nwrite twice",
        on_message=clicker(widgets, "Approve for this session"),
        timeout=90,
    )
    assert cell.status == "ok", cell.all_text
    assert len(widgets.shown) == 1  # the second write did not ask
    assert target.read_text() == "two"


def test_several_requests_in_one_step_are_shown_in_order(rig: Rig) -> None:
    first, second = rig.outside / "first.txt", rig.outside / "second.txt"
    code = (
        f"fs.write({str(first)!r}, 'a')\n"
        f"fs.write({str(second)!r}, 'b')\n"
    )
    rig.script(reply("", code), reply("One of two."))
    widgets = Widgets()
    cell = rig.kernel.execute(
        "%%agent\nwrite both", on_message=clicker(widgets, "Approve once", "Deny"), timeout=90
    )
    assert cell.status == "ok", cell.all_text
    assert first.read_text() == "a" and not second.exists()
    assert [t for t in cell.texts() if "[cave] approval" in t][0].find(str(first)) > 0
    listing = rig.approvals()
    ids = [rid for rid, _ in widgets.shown]
    assert listing.index(ids[0]) < listing.index(ids[1])  # FIFO


def controller(
    content: Callable[[str], dict[str, Any]], replies: list[dict[str, Any]]
) -> Callable[[dict[str, Any], KernelHarness], None]:
    """An on_message hook that sends ``content(request id)`` as a ``cave_approval_decision`` on
    the control channel for the first request displayed, and keeps the kernel's reply."""

    def on_message(msg: dict[str, Any], kernel: KernelHarness) -> None:
        ids = request_ids([msg])
        if ids and not replies:
            kc = kernel.kc
            request = kc.session.msg("cave_approval_decision", content(ids[0]))
            kc.control_channel.send(request)
            while True:
                answer = kc.get_control_msg(timeout=10)
                if answer["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                    replies.append(answer)
                    return

    return on_message


def _cli(session_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``cave approvals --session-dir DIR ARGS``, as a user types it in another terminal."""
    return subprocess.run(
        [sys.executable, "-m", "cave.cli", "approvals", "--session-dir", str(session_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_approves_while_the_cell_waits(rig: Rig) -> None:
    target = rig.outside / "cli.txt"
    rig.script(reply("", _write_step(target)), reply("Approved from the terminal."))
    answered: list[subprocess.CompletedProcess[str]] = []

    def from_terminal(msg: dict[str, Any], kernel: KernelHarness) -> None:
        ids = request_ids([msg])
        if ids and not answered:
            listed = _cli(rig.session_dir, "list")
            assert ids[0] in listed.stdout and "pending" in listed.stdout, listed
            answered.append(_cli(rig.session_dir, "approve", ids[0], "--who", "ops"))

    cell = rig.kernel.execute("%%agent\nwrite", on_message=from_terminal, timeout=90)
    assert cell.status == "ok", cell.all_text
    assert answered[0].returncode == 0, answered[0].stderr
    assert target.read_text() == "hello"
    assert "approved once by ops via cli" in "\n".join(cell.texts())


def test_control_channel_message_decides(rig: Rig) -> None:
    target = rig.outside / "control.txt"
    rig.script(reply("", _write_step(target)), reply("ok"))
    replies: list[dict[str, Any]] = []
    over_control = controller(lambda rid: {"id": rid, "decision": "approve_once"}, replies)
    cell = rig.kernel.execute("%%agent\nwrite", on_message=over_control, timeout=90)
    assert cell.status == "ok", cell.all_text
    assert replies[0]["msg_type"] == "cave_approval_decision_reply"
    assert replies[0]["content"]["status"] == "ok" and replies[0]["content"]["state"] == "approved"
    assert target.exists()


def test_stdin_prompt_for_frontends_without_widgets(rig: Rig) -> None:
    target = rig.outside / "stdin.txt"
    rig.script(reply("", _write_step(target)), reply("ok"))
    prompts: list[str] = []

    def console(content: dict[str, Any]) -> str:
        prompts.append(content["prompt"])
        return "maybe" if len(prompts) == 1 else "o"

    cell = rig.kernel.execute("%%agent\nwrite", stdin=console, timeout=90)
    assert cell.status == "ok", cell.all_text
    assert prompts[0].startswith("Approve ") and "[o]nce / [s]ession / [d]eny" in prompts[0]
    assert prompts[1].startswith("Please answer o, s or d.")
    assert target.read_text() == "hello"
    assert "via stdin" in rig.approvals()


def test_interrupt_while_waiting_cancels_the_request(rig: Rig) -> None:
    target = rig.outside / "interrupted.txt"
    rig.script(reply("", _write_step(target)), reply("never sent"))
    shown: list[str] = []

    def press_stop(msg: dict[str, Any], kernel: KernelHarness) -> None:
        ids = request_ids([msg])
        if ids and not shown:
            shown.append(ids[0])
            kernel.interrupt()

    cell = rig.kernel.execute("%%agent\nwrite", on_message=press_stop, timeout=60)
    assert cell.status == "error"
    assert cell.error is not None and cell.error["ename"] == "TurnInterrupted"
    assert not target.exists()
    assert len(rig.requests) == 1  # the model was not called again
    assert re.search(rf"{shown[0]}.*cancelled", rig.approvals())
    assert rig.kernel.execute("print(6 * 7)").stdout.strip() == "42"


def test_kernel_killed_while_pending_shows_expired_after_restart(tmp_path: Path) -> None:
    with Rig(tmp_path) as rig:
        rig.script(reply("", _write_step(rig.outside / "never.txt")), reply("never sent"))
        kc = rig.kernel.kc
        msg_id = kc.execute("%%agent\nwrite")
        rid = None
        deadline = time.monotonic() + 60
        while rid is None and time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id:
                ids = request_ids([msg])
                rid = ids[0] if ids else None
        assert rid is not None
        rig.kernel.restart()  # SIGKILL, as JupyterLab's restart after a crash
        listing = rig.approvals()
        assert re.search(rf"{rid}.*expired", listing), listing
        assert "the kernel that asked" in listing and "stopped before anyone decided" in listing
        assert not (rig.outside / "never.txt").exists()
        records = [
            json.loads(line) for line in (rig.session_dir / "audit.jsonl").read_text().splitlines()
        ]
        expired = [r for r in records if r["kind"] == "approval.decided" and r["id"] == rid]
        assert expired and expired[0]["state"] == "expired"


def test_session_directory_is_private(rig: Rig) -> None:
    assert os.stat(rig.session_dir / "approvals.db").st_mode & 0o077 == 0


def test_magic_decides_a_request_nobody_waits_for(rig: Rig) -> None:
    made = rig.kernel.execute(
        "import time, types\n"
        "from cave.approvals import session_channel\n"
        "_q = session_channel().queue\n"
        "_q.submit(types.SimpleNamespace(id='restored1', capability='net:example.com:443',\n"
        "    summary='GET https://example.com/', details={}, code_line=None,\n"
        "    created_at=time.time()))\n"
    )
    assert made.status == "ok", made.all_text
    approved = rig.kernel.execute("%approvals approve restored --session")
    assert "restored1: approved for this session by" in approved.stdout, approved.all_text
    again = rig.kernel.execute("%approvals deny restored1")
    assert again.status == "error" and "already approved for this session" in again.all_text
    bad = rig.kernel.execute("%approvals deny")
    assert bad.status == "error" and "usage: %approvals" in bad.all_text
