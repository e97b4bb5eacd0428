"""Whole sessions through `capture`/`save`/`restore`, without a kernel.

Real parts throughout: `Session` with the security layer on (guard, policy, audit log), the
approval queue in SQLite, the scripted model running the real agent loop, a real local store.
Approvals are answered from the test's thread through the queue, as `cave approvals` would.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cave._errors import CheckpointError, CheckpointTampered, ConfigError
from cave._session import Session
from cave.approvals._session_channel import make_channel
from cave.checkpoint import Restored, SessionStore
from cave.checkpoint._autocheckpoint import enable_autocheckpoint
from cave.checkpoint._session_io import restore, save
from cave.checkpoint._session_state import capture
from cave.checkpoint._session_store import open_store
from cave.security import parse_rule
from cave.testing import ScriptedModel, reply


class Place:
    """A workspace, a session directory, a directory outside the workspace, and a store."""

    def __init__(self, root: Path, name: str, store: Path) -> None:
        self.workspace = root / name / "ws"
        self.session_dir = root / name / "session"
        self.outside = root / "outside"
        for d in (self.workspace, self.outside):
            d.mkdir(parents=True, exist_ok=True)
        self.store = store

    def session(self, monkeypatch: pytest.MonkeyPatch, *replies: Any) -> Session:
        monkeypatch.setenv("CAVE_SESSION_DIR", str(self.session_dir))
        session = Session(
            workspace=self.workspace,
            model=ScriptedModel(list(replies)),
            channel_factory=lambda s: make_channel(s),
        )
        session.checkpoint_store = str(self.store)
        session.ensure_security()  # the session dir is read from the environment here
        return session


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Place, Place]]:
    monkeypatch.setenv("CAVE_CONFIG_DIR", str(tmp_path / "config"))
    store = tmp_path / "store"
    yield Place(tmp_path, "a", store), Place(tmp_path, "b", store)


def closing(sessions: list[Session]) -> None:
    for s in sessions:
        if s.security is not None:
            s.security.close()


def ask_in_thread(session: Session, prompt: str) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = session.ask(prompt, echo=False)
        except BaseException as exc:  # noqa: B036 - reported to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def wait_pending(session: Session, n: int = 1, timeout: float = 30.0) -> list[Any]:
    queue = session.approvals.queue
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = queue.pending()
        if len(pending) >= n:
            return pending
        time.sleep(0.02)
    raise AssertionError(f"no pending approval within {timeout} s")


def run_turn_answering(session: Session, prompt: str, outcome: str | None) -> Any:
    """One turn; the first approval it asks for gets ``outcome`` (None: it must not ask)."""
    thread, box = ask_in_thread(session, prompt)
    if outcome is not None:
        (record,) = wait_pending(session)
        session.approvals.deliver(record.id, outcome, who="tester", channel="cli")
    thread.join(30)
    if thread.is_alive():
        for record in session.approvals.queue.pending():
            session.approvals.deliver(record.id, "deny", who="tester", channel="cli")
        thread.join(30)
        raise AssertionError("the turn waited for an approval it should not have needed")
    if "error" in box:
        raise box["error"]
    return box["result"]


def plain(messages: Any) -> Any:
    """Messages as the model saw them, without the per-request cache breakpoint."""
    text = json.dumps(messages)
    return json.loads(text.replace(', "cache_control": {"type": "ephemeral"}', ""))


def audit_records(session: Session) -> list[dict[str, Any]]:
    path = Path(session.audit.path)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_round_trip_values_history_grants_policy_settings(places, monkeypatch) -> None:
    a_place, b_place = places
    target = a_place.outside / "report.txt"
    write = f"n = fs.write({str(target)!r}, 'one')"
    a = a_place.session(
        monkeypatch,
        reply("", "total = float(sales['amount'].sum())\ndef double(x):\n    return 2 * x\n"
              + write),
        reply("Total computed, report written."),
    )
    b: Session | None = None
    try:
        sales = pd.DataFrame({"region": ["n", "s", "e"], "amount": [1.5, 2.5, 4.0]})
        a.runtime.inject("sales", sales, "daily sales")
        run_turn_answering(a, "sum the sales and write a report", "approve_session")
        assert target.read_text() == "one"
        a.security.with_policy(
            a.security.policy.with_rules(parse_rule("deny net:evil.example")), by="test"
        )
        a.use_endpoint("http://127.0.0.1:9", model="claude-test")
        a.agent_settings = a.agent_settings.with_limits(max_steps=7)
        info = save(a, "one")
        assert info.objects == 4 and not info.unpicklable  # sales, total, double, n

        b = b_place.session(monkeypatch)
        report = restore(b, "one")
        assert report.problems == () and report.grants == 1
        ns = b.runtime.namespace
        pd.testing.assert_frame_equal(ns["sales"], sales)
        assert ns["sales"] is not sales and ns["total"] == 8.0 and ns["double"](21) == 42
        assert ns["double"].__globals__ is ns  # agent functions see the live namespace
        assert dict(b.runtime.injected)["sales"] == dict(a.runtime.injected)["sales"]
        assert b.history == a.history
        assert b.model_settings == a.model_settings and b.agent_settings.max_steps == 7
        rules = {(r.capability, r.effect.value) for r in b.security.policy.rules}
        assert ("net:evil.example", "deny") in rules
        assert b.security.policy.workspace == b.workspace.resolve()  # rebased to the new session
        assert [g.capability for g in b.security.grants] == [f"fs.write:{target}"]

        model = ScriptedModel(
            [reply("", f"n = fs.write({str(target)!r}, 'two')\nprint(double(total))"),
             reply("Done again.")]
        )
        b.set_model(model)  # the restored settings name an endpoint; the script stands in for it
        result = run_turn_answering(b, "once more", None)  # the session grant: no asking
        assert result.answer == "Done again." and target.read_text() == "two"
        first = model.requests[0]
        assert plain(list(first.messages))[: len(a.history)] == plain(a.history)

        kinds = [r["kind"] for r in audit_records(b)]
        assert "checkpoint.restore" in kinds
        saved = [r for r in audit_records(a) if r["kind"] == "checkpoint.save"][-1]
        assert saved["name"] == "one" and saved["objects"] == 4
        restored = [r for r in audit_records(b) if r["kind"] == "checkpoint.restore"][-1]
        assert restored["checkpoint_audit_head"][0] == saved["seq"] - 1
    finally:
        closing([a, *([b] if b else [])])


def test_pending_approval_saved_mid_turn_comes_back_and_its_approval_is_a_grant(
    places, monkeypatch
) -> None:
    a_place, b_place = places
    target = a_place.outside / "later.txt"
    step = f"fs.write({str(target)!r}, 'x')"
    a = a_place.session(monkeypatch, reply("Writing.", step), reply("Could not."))
    b: Session | None = None
    try:
        thread, box = ask_in_thread(a, "write later.txt")
        (waiting,) = wait_pending(a)
        assert a.busy
        info = save(a, "mid")  # while the agent's code waits for a person
        a.approvals.deliver(waiting.id, "deny", who="tester", channel="cli")
        thread.join(30)
        assert "result" in box and not target.exists()

        state = open_store(a).load("mid").state
        (pending,) = state["approvals"]
        assert pending["id"] == waiting.id and pending["capability"] == f"fs.write:{target}"
        closed = state["history"][-1]
        assert closed["role"] == "user"
        assert closed["content"][0]["type"] == "tool_result"  # the step's tool call is answered
        assert "still running" in closed["content"][-1]["text"]
        assert info.name == "mid"

        b = b_place.session(monkeypatch, reply("", step), reply("Written now."))
        report = restore(b, "mid")
        ((new_id, old_id, capability),) = report.approvals
        assert old_id == waiting.id and capability == f"fs.write:{target}"
        (record,) = b.approvals.queue.pending()
        assert record.id == new_id and record.details["restored_from"] == waiting.id
        assert "pending again" in report.summary()

        # Approving later runs nothing now; the agent's next attempt goes through without asking.
        b.approvals.queue.decide(new_id, "approve_once", who="ops", channel="cli")
        assert not target.exists()
        result = run_turn_answering(b, "try again", None)
        assert result.answer == "Written now." and target.read_text() == "x"
        assert b.security.grants == ()  # the once grant was used up by that write
        grants = [r for r in audit_records(b) if r["kind"] == "grant"]
        assert grants and grants[0]["request"] == new_id and "checkpoint" in grants[0]["via"]
    finally:
        closing([a, *([b] if b else [])])


def test_tampered_checkpoint_changes_nothing(places, monkeypatch) -> None:
    a_place, _ = places
    a = a_place.session(monkeypatch)
    try:
        a.runtime.inject("frame", pd.DataFrame({"x": [1, 2]}), "f")
        a.runtime.namespace["v"] = [1, 2, 3]
        a.history.append({"role": "user", "content": [{"type": "text", "text": "hi"}]})
        save(a, "good")
        db = sqlite3.connect(a_place.store / "checkpoints.sqlite")
        with db:
            raw = db.execute("SELECT manifest FROM checkpoints WHERE name='good'").fetchone()[0]
            db.execute(
                "UPDATE checkpoints SET manifest=? WHERE name='good'",
                (bytes(raw).replace(b'"v"', b'"w"'),),
            )
        db.close()
        frame, v = a.runtime.namespace["frame"], a.runtime.namespace["v"]
        a.runtime.namespace["later"] = "made after the save"
        history = list(a.history)
        with pytest.raises(CheckpointTampered, match="manifest signature"):
            restore(a, "good")
        ns = a.runtime.namespace
        assert ns["frame"] is frame and ns["v"] is v and ns["later"] == "made after the save"
        assert list(a.runtime.injected) == ["frame"] and a.history == history
    finally:
        closing([a])


def test_unusable_state_rolls_back_the_namespace(places, monkeypatch) -> None:
    a_place, _ = places
    a = a_place.session(monkeypatch)
    try:
        a.runtime.inject("keep", {"k": 1})
        _ns, state = capture(a)
        state = {**state, "version": 99}
        loaded = Restored({"intruder": 1}, state)
        with pytest.raises(CheckpointError, match="state format 99"):
            restore(a, loaded)
        assert "intruder" not in a.runtime.namespace and a.runtime.retrieve("keep") == {"k": 1}
        assert list(a.runtime.injected) == ["keep"]
    finally:
        closing([a])


def test_restore_removes_later_names_and_keeps_what_could_not_be_saved(
    places, monkeypatch
) -> None:
    a_place, _ = places
    a = a_place.session(monkeypatch)
    try:
        ns = a.runtime.namespace
        lock = threading.Lock()
        ns.update(x=1, lock=lock, items=[1, 2])
        info = save(a, "base")
        assert [(p.name, p.type) for p in info.unpicklable] == [("lock", "_thread.lock")]
        ns.update(x=2, later="new")
        ns["items"].append(3)
        report = restore(a, "base")
        assert ns["x"] == 1 and ns["items"] == [1, 2] and "later" not in ns
        assert ns["lock"] is lock and report.kept == ("lock",)
        assert "kept its current value" in report.summary()
        assert callable(ns["fs"]) or hasattr(ns["fs"], "write")  # primitives untouched
    finally:
        closing([a])


def test_restore_is_refused_while_a_turn_runs(places, monkeypatch) -> None:
    a_place, _ = places
    target = a_place.outside / "blocked.txt"
    a = a_place.session(monkeypatch, reply("", f"fs.write({str(target)!r}, 'x')"), reply("ok"))
    try:
        save(a, "before")
        thread, _box = ask_in_thread(a, "write")
        (record,) = wait_pending(a)
        with pytest.raises(ConfigError, match="turn is running"):
            restore(a, "before")
        a.approvals.deliver(record.id, "deny", who="tester", channel="cli")
        thread.join(30)
    finally:
        closing([a])


def test_auto_checkpoint_after_each_turn_keeps_the_newest(places, monkeypatch) -> None:
    a_place, _ = places
    a = a_place.session(
        monkeypatch,
        reply("", "a = 1"), reply("one"),
        reply("", "b = [0] * 1000"), reply("two"),
        reply("", "a = 3"), reply("three"),
    )
    try:
        enable_autocheckpoint(a, keep=2)
        for prompt in ("first", "second", "third"):
            a.ask(prompt, echo=False)
        store = open_store(a)
        assert [i.name for i in store.list()] == ["auto-2", "auto-3"]
        assert store.verify().ok and store.verify().orphan_blobs == 0  # pruned, then collected
        loaded = store.load("auto-3")
        assert loaded.namespace["a"] == 3 and len(loaded.state["history"]) == len(a.history)
    finally:
        closing([a])


def test_failing_auto_checkpoint_keeps_the_turn_and_is_reported(
    places, monkeypatch, capsys
) -> None:
    a_place, _ = places
    blocker = a_place.workspace.parent / "not-a-directory"
    blocker.write_text("a file where the store should be")
    a = a_place.session(monkeypatch, reply("", "answer = 42"), reply("It is 42."))
    try:
        a.checkpoint_store = str(blocker / "checkpoints")
        enable_autocheckpoint(a)
        result = a.ask("compute", echo=False)
        assert result.answer == "It is 42." and a.runtime.retrieve("answer") == 42
        err = capsys.readouterr().err
        assert "[cave] auto-checkpoint failed" in err and "turn's result is kept" in err
        errors = [r for r in audit_records(a) if r["kind"] == "checkpoint.error"]
        assert errors and errors[0]["auto"] is True
    finally:
        closing([a])


def test_auto_checkpoint_reports_unpicklable_objects_once(places, monkeypatch, capsys) -> None:
    a_place, _ = places
    a = a_place.session(
        monkeypatch,
        reply("", "import threading\nguard = threading.Lock()\nvalue = 5"), reply("made"),
        reply("", "value = 6"), reply("again"),
    )
    try:
        enable_autocheckpoint(a)
        a.ask("make a lock", echo=False)
        first = capsys.readouterr().err
        assert "guard (_thread.lock)" in first and "cannot be pickled" in first
        a.ask("change value", echo=False)
        assert "guard" not in capsys.readouterr().err  # same set: not repeated
        assert open_store(a).load("auto-2").namespace["value"] == 6
    finally:
        closing([a])


def test_save_into_the_same_store_from_two_sessions_keeps_one_session_id(
    places, monkeypatch
) -> None:
    a_place, b_place = places
    a = a_place.session(monkeypatch)
    b = b_place.session(monkeypatch)
    try:
        a.runtime.namespace["x"] = 1
        save(a, "from-a")
        restore(b, "from-a")
        b.runtime.namespace["x"] = 2
        save(b, "from-b")
        store = SessionStore(a_place.store)
        assert [i.name for i in store.list()] == ["from-a", "from-b"]
        assert store.load("from-b").namespace["x"] == 2
    finally:
        closing([a, b])


def test_progress_bar_only_for_large_transfers(places, monkeypatch, capsys) -> None:
    import numpy as np

    from cave.checkpoint import _session_io

    a_place, _ = places
    a = a_place.session(monkeypatch)
    try:
        a.runtime.namespace["small"] = list(range(100))
        # tqdm.auto writes to stderr, or to stdout once an IPython kernel module was imported
        # in this process (another test may have): either stream counts.
        def shown() -> str:
            captured = capsys.readouterr()
            return captured.out + captured.err

        save(a, "small")
        assert "checkpoint save" not in shown()
        monkeypatch.setattr(_session_io, "PROGRESS_MIN_BYTES", 1 << 20)
        a.runtime.namespace["big"] = np.ones(1 << 19)  # 4 MiB: over the lowered threshold
        save(a, "big")
        assert "checkpoint save" in shown()
        restore(a, "big")
        assert "checkpoint restore" in shown()
    finally:
        closing([a])


def test_restore_audit_record_matches_the_report_for_a_name_and_for_a_loaded_checkpoint(
    places, monkeypatch
) -> None:
    a_place, _ = places
    a = a_place.session(monkeypatch)
    try:
        ns = a.runtime.namespace
        lock = threading.Lock()
        ns.update(x=1, lock=lock)
        save(a, "base")
        ns["x"] = 2
        report = restore(a, "base")
        record = [r for r in audit_records(a) if r["kind"] == "checkpoint.restore"][-1]
        assert record["name"] == "base" and record["store"] == open_store(a).url
        assert record["objects"] == len(report.objects) == 1 and ns["x"] == 1
        assert record["problems"] == [f"lock: {report.problems[0].reason}"]
        assert record["kept"] == ["lock"] and list(report.kept) == ["lock"]
        assert record["messages"] == report.messages and record["grants"] == report.grants
        assert record["approvals"] == [] and record["checkpoint_audit_head"] is not None

        # A checkpoint loaded elsewhere: its objects are copied in, and no store is recorded.
        loaded = SessionStore(a_place.store).load("base")
        ns.update(x=3, later="made after the first restore")
        report = restore(a, loaded)
        assert ns["x"] == 1 and "later" not in ns and ns["lock"] is lock
        assert report.name == "base" and report.objects == ("x",)
        record = [r for r in audit_records(a) if r["kind"] == "checkpoint.restore"][-1]
        assert record["name"] == "base" and record["store"] is None and record["objects"] == 1
    finally:
        closing([a])
