"""Checkpoints through real Cave kernels over ZMQ: save, shut down, resume in a new kernel.

The model is the loopback Anthropic server driven by the real SDK; approvals are answered the way
JupyterLab or a terminal would (control-channel message, `cave approvals` CLI). The mid-turn
checkpoint is taken from a kernel subshell while the agent's code waits for a person, which is
how a pending approval ends up in a checkpoint.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cave.testing import KernelHarness, ScriptedServer, reply

pytestmark = pytest.mark.slow

SALES = "pd.DataFrame({'region': ['n', 's', 'e', 'w'], 'amount': [1.5, 2.5, 4.0, 8.0]})"


Model = ScriptedServer  # one server for every kernel of the module


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    m = Model()
    try:
        yield m
    finally:
        m.server.stop()


def kernel(root: Path, name: str, model: Model, **env: str) -> KernelHarness:
    workspace = root / name / "ws"
    workspace.mkdir(parents=True, exist_ok=True)
    base = {
        **model.env(),
        "CAVE_CONFIG_DIR": str(root / "config"),  # one user: one signing key for both kernels
        "CAVE_SESSION_DIR": str(root / name / "session"),
        "CAVE_CHECKPOINTS": str(root / "store"),
    }
    return KernelHarness(env={**base, **env}, cwd=workspace).start()


def ok(k: KernelHarness, code: str, timeout: float = 90) -> Any:
    cell = k.execute(code, timeout=timeout)
    assert cell.status == "ok", cell.all_text
    return cell


def approval_ids(msg: dict[str, Any]) -> list[str]:
    if msg["msg_type"] != "display_data":
        return []
    found = re.match(r"\[cave\] approval (\w+):", msg["content"]["data"].get("text/plain", ""))
    return [found.group(1)] if found else []


def decide_over_control(k: KernelHarness, request_id: str, decision: str) -> None:
    kc = k.kc
    request = kc.session.msg("cave_approval_decision", {"id": request_id, "decision": decision})
    kc.control_channel.send(request)
    while True:
        answer = kc.get_control_msg(timeout=10)
        if answer["parent_header"].get("msg_id") == request["header"]["msg_id"]:
            assert answer["content"]["status"] == "ok", answer["content"]
            return


def answering(decision: str) -> Any:
    def on_message(msg: dict[str, Any], k: KernelHarness) -> None:
        for rid in approval_ids(msg):
            decide_over_control(k, rid, decision)

    return on_message


def no_approval(cell: Any) -> None:
    asked = [rid for m in cell.messages for rid in approval_ids(m)]
    assert not asked, f"asked for approval again: {asked}"


def subshell(k: KernelHarness) -> str:
    kc = k.kc
    request = kc.session.msg("create_subshell_request", {})
    kc.control_channel.send(request)
    while True:
        answer = kc.get_control_msg(timeout=10)
        if answer["parent_header"].get("msg_id") == request["header"]["msg_id"]:
            return str(answer["content"]["subshell_id"])


def send(k: KernelHarness, code: str, subshell_id: str | None = None) -> str:
    content = {
        "code": code,
        "silent": False,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    msg = k.kc.session.msg("execute_request", content)
    if subshell_id is not None:
        msg["header"]["subshell_id"] = subshell_id
    k.kc.shell_channel.send(msg)
    return str(msg["header"]["msg_id"])


def stdout_of(messages: list[dict[str, Any]]) -> str:
    return "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


def save_while_pending(k: KernelHarness, agent_cell: str, name: str) -> dict[str, Any]:
    """Run ``agent_cell``; when it asks for approval, save ``name`` from a subshell, then deny."""
    sid = subshell(k)
    main = send(k, agent_cell)
    seen: dict[str, list[dict[str, Any]]] = {main: []}
    waiting: str | None = None
    save_id: str | None = None
    idle: set[str] = set()
    deadline = time.monotonic() + 120
    while main not in idle:
        assert time.monotonic() < deadline, "the agent cell did not finish"
        try:
            msg = k.kc.get_iopub_msg(timeout=0.1)
        except queue.Empty:
            continue
        parent = msg["parent_header"].get("msg_id")
        if parent not in seen:
            continue
        seen[parent].append(msg)
        if parent == main and waiting is None and approval_ids(msg):
            waiting = approval_ids(msg)[0]
            save_id = send(k, f"%checkpoint save {name}", sid)
            seen[save_id] = []
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle.add(str(parent))
            if parent == save_id and waiting is not None:
                decide_over_control(k, waiting, "deny")
    assert save_id is not None and save_id in idle
    return {"request": waiting, "save": seen[save_id], "agent": seen[main]}


def test_round_trip_through_two_kernels(tmp_path: Path, model: Model) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    report, later = outside / "report.txt", outside / "later.txt"
    a = kernel(tmp_path, "a", model)
    try:
        ok(a, f"import cave, pandas as pd\ncave.inject('sales', {SALES}, 'daily sales')")
        ok(a, "%cave policy deny net:evil.example")
        start = model.script(
            reply(
                "Summing.",
                "total = float(sales['amount'].sum())\n"
                "def double(x):\n    return 2 * x\n"
                f"n = fs.write({str(report)!r}, 'one')",
            ),
            reply("The total is 16.0; the report is written."),
            reply("Writing the second file.", f"fs.write({str(later)!r}, 'x')"),
            reply("I was not allowed to write it."),
        )
        turn1 = a.execute(
            "%%agent\nsum the sales, write a report", on_message=answering("approve_session"),
            timeout=90,
        )
        assert turn1.status == "ok", turn1.all_text
        assert report.read_text() == "one"
        mid = save_while_pending(a, "%%agent\nnow write later.txt", "mid")
        saved = stdout_of(mid["save"])
        assert "Saved checkpoint 'mid'" in saved, mid["save"]
        assert not later.exists()
        sent_a = model.server.requests[start:]
        assert len(sent_a) == 4
        before_save = sent_a[2].body["messages"]  # what the model saw in the turn that waited
        assert "Saved checkpoint" not in json.dumps(sent_a[3].body)  # not in the agent's output
        listing = ok(a, "%checkpoint list").stdout
        assert "mid" in listing and "auto-1" in listing  # turn 1 was auto-checkpointed
    finally:
        a.stop()

    b = kernel(tmp_path, "b", model, CAVE_RESUME="mid")
    try:
        first = ok(b, "print('first cell')")
        assert "[cave] Restored checkpoint 'mid'" in first.stdout, first.all_text
        assert "pending again" in first.stdout
        assert "Restored" not in ok(b, "print('second cell')").stdout  # said once
        ok(
            b,
            "import cave, pandas as pd\n"
            f"pd.testing.assert_frame_equal(cave.retrieve('sales'), {SALES})\n"
            "assert cave.retrieve('total') == 16.0 and cave.retrieve('double')(21) == 42\n"
            "assert cave.session().runtime.injected['sales'].description == 'daily sales'",
        )
        policy = ok(b, "%cave policy").stdout
        assert re.search(r"deny\s+net:evil\.example", policy), policy
        pending = ok(b, "%approvals").stdout
        (new_id,) = re.findall(rf"(\w+)\s+\S+ \S+\s+pending\s+fs\.write:{re.escape(str(later))}",
                               pending)

        start = model.script(
            reply("Again.", f"n = fs.write({str(report)!r}, 'two')\nprint(double(total))"),
            reply("Done: 32.0."),
        )
        turn3 = b.execute("%%agent\nwrite the report again", timeout=90)
        assert turn3.status == "ok", turn3.all_text
        no_approval(turn3)  # the session grant came back with the checkpoint
        assert report.read_text() == "two" and "32.0" in turn3.stdout
        messages = model.server.requests[start].body["messages"]
        strip = json.loads(json.dumps(before_save).replace(
            ', "cache_control": {"type": "ephemeral"}', ""))
        seen = json.loads(json.dumps(messages).replace(
            ', "cache_control": {"type": "ephemeral"}', ""))
        assert seen[: len(strip)] == strip  # the model sees the same history
        waited = seen[len(strip)]
        assert waited["role"] == "assistant" and "later.txt" in json.dumps(waited)
        closed = seen[len(strip) + 1]
        assert closed["content"][0]["type"] == "tool_result"
        assert "now write later.txt" not in json.dumps(seen[len(strip) + 2 :])

        # The pending request, approved later from a terminal, lets the next attempt through.
        approved = subprocess.run(
            [sys.executable, "-m", "cave.cli", "approvals", "--session-dir",
             str(tmp_path / "b" / "session"), "approve", new_id, "--who", "ops"],
            capture_output=True, text=True, timeout=60,
        )
        assert approved.returncode == 0, approved.stderr
        assert not later.exists()  # approving ran nothing
        model.script(reply("", f"fs.write({str(later)!r}, 'x')"), reply("Written."))
        turn4 = b.execute("%%agent\ntry later.txt again", timeout=90)
        assert turn4.status == "ok", turn4.all_text
        no_approval(turn4)
        assert later.read_text() == "x"
    finally:
        b.stop()
    audit = [
        json.loads(line)
        for line in (tmp_path / "b" / "session" / "audit.jsonl").read_text().splitlines()
    ]
    kinds = [r["kind"] for r in audit]
    assert "checkpoint.restore" in kinds and "checkpoint.save" in kinds  # turns 3, 4: auto


def test_checkpoint_magics_and_auto_checkpoints(tmp_path: Path, model: Model) -> None:
    k = kernel(tmp_path, "m", model, CAVE_AUTOCHECKPOINT_KEEP="1")
    try:
        ok(k, "import cave\ncave.inject('x', [1, 2])")
        assert "Saved checkpoint 'a'" in ok(k, "%checkpoint save a").stdout
        model.script(
            reply("", "import threading\nlock = threading.Lock()\ny = 2\nx.append(3)"),
            reply("Made y."),
        )
        turn = k.execute("%%agent -o y\nmake y", timeout=90)
        assert turn.status == "ok", turn.all_text
        assert "left out what cannot be pickled" in turn.stderr
        assert "lock (_thread.lock)" in turn.stderr
        assert any("Made y." in t for t in turn.texts("text/markdown"))  # the result stayed
        assert ok(k, "print(y)").stdout.strip() == "2"

        listing = ok(k, "%checkpoint list").stdout
        rows = {line.split()[0]: line for line in listing.splitlines()[2:]}
        assert set(rows) == {"a", "auto-2"}, listing
        assert "lock" in rows["auto-2"]  # the unpicklable column
        diff = ok(k, "%checkpoint diff a auto-2").stdout
        assert re.search(r"added: threading, y", diff) and re.search(r"changed: x", diff), diff

        model.script(reply("", "z = 1"), reply("Made z."))
        ok(k, "%agent make z")
        names = [line.split()[0] for line in ok(k, "%checkpoint list").stdout.splitlines()[2:]]
        assert names == ["a", "auto-3"]  # keep=1: auto-2 pruned, the named one kept

        restored = ok(k, "%checkpoint restore a").stdout
        assert "Restored checkpoint 'a'" in restored
        ok(
            k,
            "ns = cave.session().runtime.namespace\n"
            "assert cave.retrieve('x') == [1, 2]\n"
            "assert 'y' not in ns and 'z' not in ns and 'lock' not in ns\n"
            "assert cave.session().history == []",
        )
        error = k.execute("%checkpoint restore nope")
        assert error.status == "error" and "No checkpoint named 'nope'" in error.all_text
        assert "auto-checkpoint: on, keeping the newest 1" in ok(k, "%checkpoint auto").stdout
        assert "off" in ok(k, "%checkpoint auto off").stdout

        # Large saves show tqdm's notebook bar in the cell (threshold lowered from 64 MiB).
        ok(k, "import numpy as np\nfrom cave.checkpoint import _session_io\n"
              "_session_io.PROGRESS_MIN_BYTES = 1 << 20\nbig = np.ones(1 << 19)")
        small = ok(k, "%checkpoint save without-bar")  # `big` is the user's, not the agent's
        assert not small.of_type("comm_open")
        ok(k, "cave.inject('big', big)")
        bar = ok(k, "%checkpoint save with-bar")
        models = [m["content"]["data"]["state"].get("_model_name")
                  for m in bar.of_type("comm_open")]
        assert "FloatProgressModel" in models, models
    finally:
        k.stop()


def test_failed_resume_is_reported_and_the_kernel_starts_fresh(
    tmp_path: Path, model: Model
) -> None:
    k = kernel(tmp_path, "f", model, CAVE_RESUME="missing", CAVE_AUTOCHECKPOINT="0")
    try:
        first = ok(k, "import cave\nprint(len(cave.session().history))")
        assert "Could not resume from checkpoint 'missing'" in first.stderr, first.all_text
        assert "No checkpoint named 'missing'" in first.stderr
        assert first.stdout.strip() == "0"
        model.script(reply("", "w = 1"), reply("ok"))
        ok(k, "%agent set w")
        assert "No checkpoints yet." in ok(k, "%checkpoint list").stdout  # auto is off
        assert "auto-checkpoint: off" in ok(k, "%checkpoint auto").stdout
    finally:
        k.stop()


def test_s3_save_on_one_kernel_resume_on_another(
    tmp_path: Path, model: Model, s3_endpoint: str
) -> None:
    import uuid

    import boto3

    aws = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    bucket = f"cave-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/sessions/demo"
    a = kernel(tmp_path, "s3a", model, CAVE_CHECKPOINTS=url, **aws)
    try:
        ok(a, "import cave, numpy as np\ncave.inject('arr', np.arange(100_000.0), 'numbers')")
        assert "Saved checkpoint 'handoff'" in ok(a, "%checkpoint save handoff").stdout
    finally:
        a.stop()
    b = kernel(tmp_path, "s3b", model, CAVE_CHECKPOINTS=url, CAVE_RESUME="handoff", **aws)
    try:
        first = ok(b, "import cave\nprint(cave.retrieve('arr').sum())")
        assert "Restored checkpoint 'handoff'" in first.stdout, first.all_text
        assert str(float(sum(range(100_000)))) in first.stdout
    finally:
        b.stop()


def test_in_place_edits_between_turns_reach_the_auto_checkpoints(
    tmp_path: Path, model: Model
) -> None:
    """Kernel write tracking in a real kernel: an injected 16 MB array edited in place by the
    user between agent turns. Every edit lands in the next auto-checkpoint; a turn without an
    edit reads nothing again (the array's digest came from the kernel's page tracking)."""
    from cave.checkpoint import SessionStore
    from cave.checkpoint._signing import load_or_create_secret

    k = kernel(tmp_path, "track", model)
    try:
        ok(k, "import cave, numpy as np\narr = np.zeros(2_000_000)\ncave.inject('arr', arr, '')")
        edits = [None, "arr[123] = 42.0", "arr[-1] = 7.0", None, "arr[1_000_000] = -1.0"]
        for turn, edit in enumerate(edits, 1):
            if edit is not None:
                ok(k, edit)
            model.script(reply(f"turn {turn}"))
            cell = ok(k, f"%%agent\nturn {turn}")
            assert f"turn {turn}" in cell.all_text
        cached = ok(k, "from cave.checkpoint import _fingerprint as f\nprint(f.cached_buffers())")
        from cave.checkpoint import _write_tracking

        if _write_tracking.tracker() is not None:  # same machine: the kernel tracks pages too
            assert int(cached.stdout.strip()) >= 1
    finally:
        k.stop()

    store = SessionStore(tmp_path / "store", secret=load_or_create_secret(tmp_path / "config"))
    autos = [info for info in store.list() if info.name.startswith("auto-")]
    assert len(autos) == len(edits)
    expected = np.zeros(2_000_000)
    for info, edit in zip(autos, edits, strict=True):
        if edit is not None:
            exec(edit, {"arr": expected})
        saved = store.load(info.name).namespace["arr"]
        np.testing.assert_array_equal(saved, expected, err_msg=f"{info.name} after {edit!r}")
        if info is autos[0]:
            assert info.changes.added == ("arr",), info
        else:
            assert ("arr" in info.changes.changed) == (edit is not None), info
