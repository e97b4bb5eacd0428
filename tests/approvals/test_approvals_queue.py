"""The persisted queue on real SQLite files, with real second processes deciding and dying."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cave import ApprovalError
from cave.approvals._owner import Owner
from cave.approvals._queue import AlreadyDecided, ApprovalQueue, UnknownRequest
from cave.approvals._render import format_table


@dataclass(frozen=True)
class Req:
    id: str
    capability: str = "fs.write:/tmp/outside/x.txt"
    summary: str = "write 5 bytes to /tmp/outside/x.txt"
    details: dict[str, Any] = field(default_factory=lambda: {"path": "/tmp/outside/x.txt"})
    code_line: str | None = "fs.write('/tmp/outside/x.txt', 'hello')"
    created_at: float = field(default_factory=time.time)


def test_fifo_states_and_first_decision_wins(tmp_path: Path) -> None:
    q = ApprovalQueue.in_directory(tmp_path)
    for i in range(3):
        q.submit(Req(f"req{i}aaaa"))
    assert [r.id for r in q.pending()] == ["req0aaaa", "req1aaaa", "req2aaaa"]

    approved = q.decide("req1", "approve_session", who="alice", channel="widget")
    assert (approved.state, approved.scope, approved.decided_by) == ("approved", "session", "alice")
    assert "approved for this session by alice via widget" in approved.outcome_text()
    with pytest.raises(AlreadyDecided) as err:
        q.decide("req1aaaa", "deny", who="bob", channel="cli")
    assert err.value.state == "approved" and "nothing changed" in str(err.value)
    assert isinstance(err.value, ApprovalError)
    assert q.get("req1aaaa").decided_by == "alice"  # the loser changed nothing

    q.decide("req0aaaa", "deny", who="bob", channel="cli", reason="not today")
    assert [r.id for r in q.pending()] == ["req2aaaa"]
    assert [r.state for r in q.recent()] == ["denied", "approved", "pending"]
    table = format_table(q.listing())
    assert "not today" in table and "1 pending" in table and "cave approvals approve" in table


def test_unknown_and_ambiguous_ids(tmp_path: Path) -> None:
    q = ApprovalQueue.in_directory(tmp_path)
    q.submit(Req("abc111"))
    q.submit(Req("abc222"))
    with pytest.raises(UnknownRequest, match="several requests"):
        q.decide("abc", "deny", who="x", channel="cli")
    with pytest.raises(UnknownRequest, match="No approval request with id 'zzz'"):
        q.get("zzz")
    with pytest.raises(ApprovalError, match="Unknown outcome"):
        q.decide("abc111", "maybe", who="x", channel="cli")
    assert q.decide("abc2", "approve_once", who="x", channel="cli").id == "abc222"


def test_file_is_private_wal_and_survives_reopen(tmp_path: Path) -> None:
    with ApprovalQueue.in_directory(tmp_path) as q:
        q.submit(Req("keepme", details={"preview": "x" * 100_000, "blob": b"\xff\x00"}))
    path = tmp_path / "approvals.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    with ApprovalQueue.in_directory(tmp_path) as q:
        record = q.get("keepme")
        assert record.pending
        assert len(record.details["preview"]) < 5000  # bounded for display
        assert record.details["blob"] == "\ufffd\x00"


def test_timeout_expires_overdue_only(tmp_path: Path) -> None:
    q = ApprovalQueue.in_directory(tmp_path)
    now = time.time()
    q.submit(Req("slow", created_at=now - 10), timeout=5)
    q.submit(Req("fresh", created_at=now), timeout=60)
    q.submit(Req("forever", created_at=now - 1000))
    expired = q.expire_overdue(now)
    assert [r.id for r in expired] == ["slow"]
    assert expired[0].state == "expired" and "no decision within 5 s" in (expired[0].reason or "")
    assert [r.id for r in q.pending()] == ["fresh", "forever"]


_CHILD = textwrap.dedent(
    """
    import sys, time
    from cave.approvals._queue import ApprovalQueue
    sys.path.insert(0, sys.argv[2])
    from test_approvals_queue import Req
    q = ApprovalQueue.in_directory(sys.argv[1])
    q.submit(Req("orphan01"))
    print("submitted", flush=True)
    time.sleep(60)
    """
)


def test_requests_of_a_killed_process_expire_with_reason(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "submitted"
        q = ApprovalQueue.in_directory(tmp_path)
        owner = Owner.parse(q.get("orphan01").owner)
        assert owner.pid == child.pid and owner.alive() is True
        assert q.expire_orphans() == []  # alive: left alone
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    expired = q.expire_orphans()
    assert [r.id for r in expired] == ["orphan01"]
    record = q.get("orphan01")
    assert record.state == "expired" and record.channel == "restart"
    assert f"pid {child.pid}" in (record.reason or "") and "stopped" in (record.reason or "")


_DECIDER = textwrap.dedent(
    """
    import sys
    from cave.approvals._queue import ApprovalQueue, AlreadyDecided
    q = ApprovalQueue.in_directory(sys.argv[1])
    won = 0
    for i in range(int(sys.argv[2])):
        try:
            q.decide(f"r{i:03d}", sys.argv[3], who=sys.argv[3], channel="cli")
            won += 1
        except AlreadyDecided:
            pass
    print(won)
    """
)


def test_two_processes_racing_each_request_is_decided_exactly_once(tmp_path: Path) -> None:
    n = 60
    q = ApprovalQueue.in_directory(tmp_path)
    for i in range(n):
        q.submit(Req(f"r{i:03d}"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DECIDER, str(tmp_path), str(n), outcome],
            stdout=subprocess.PIPE,
            text=True,
        )
        for outcome in ("approve_once", "deny")
    ]
    wins = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(wins) == n
    records = q.recent(n)
    assert not q.pending()
    assert sum(r.state == "approved" for r in records) == wins[0]
    assert all((r.state == "approved") == (r.decided_by == "approve_once") for r in records)
    assert os.path.exists(tmp_path / "approvals.db-wal")


def test_on_timeout_is_stored_and_named_in_the_expiry_reason(tmp_path: Path) -> None:
    q = ApprovalQueue.in_directory(tmp_path)
    now = time.time()
    q.submit(Req("veto", created_at=now - 10), timeout=5, on_timeout="allow")
    q.submit(Req("strict", created_at=now - 10), timeout=2.5)
    pending = {r.id: r for r in q.pending()}
    assert pending["veto"].deadline_text() is not None
    assert pending["veto"].deadline_text().endswith("then allow")  # type: ignore[union-attr]
    assert "expires at" in format_table(q.listing()) and "then deny" in format_table(q.listing())
    reasons = {r.id: r.reason for r in q.expire_overdue(now)}
    assert reasons == {
        "veto": "no decision within 5 s; the policy says allow on timeout",
        "strict": "no decision within 2.5 s; the policy says deny on timeout",
    }
    table = format_table(q.listing())
    assert "expired by cave via timeout" in table and "expires at" not in table
    with pytest.raises(ApprovalError, match="deny or allow"):
        q.submit(Req("odd"), timeout=1, on_timeout="ask")


def test_a_database_from_before_timeouts_and_answers_gains_the_columns(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "approvals.db")
    raw.executescript(
        """
        CREATE TABLE requests (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            capability TEXT NOT NULL, summary TEXT NOT NULL, details TEXT NOT NULL,
            code_line TEXT, created_at REAL NOT NULL, deadline REAL, owner TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
            scope TEXT, decided_by TEXT, channel TEXT, decided_at REAL, reason TEXT);
        INSERT INTO requests (id, capability, summary, details, created_at, owner, state)
            VALUES ('old1', 'shell:git', 'run git', '{}', 1.0, 'h@1:1', 'denied');
        """
    )
    raw.close()
    q = ApprovalQueue.in_directory(tmp_path)
    assert q.get("old1").state == "denied" and q.get("old1").answer is None
    q.submit(Req("ask1", capability="human:ask", summary="Which year?"))
    assert q.decide("ask1", "answer", who="x", channel="cli", answer="1999").answer == "1999"


def test_questions_take_answers_and_approvals_take_decisions(tmp_path: Path) -> None:
    from cave.approvals._queue import MAX_ANSWER_CHARS

    q = ApprovalQueue.in_directory(tmp_path)
    q.submit(Req("q1", capability="human:ask", summary="Which table?"))
    q.submit(Req("w1"))
    with pytest.raises(ApprovalError, match="is a question from the agent: answer it"):
        q.decide("q1", "approve_once", who="x", channel="cli")
    with pytest.raises(ApprovalError, match="asks for approval, not for an answer"):
        q.decide("w1", "answer", who="x", channel="cli", answer="yes")
    with pytest.raises(ApprovalError, match="empty answer"):
        q.decide("q1", "answer", who="x", channel="cli", answer="  \n")
    with pytest.raises(ApprovalError, match=f"the limit is {MAX_ANSWER_CHARS:,}"):
        q.decide("q1", "answer", who="x", channel="cli", answer="x" * (MAX_ANSWER_CHARS + 1))
    with pytest.raises(ApprovalError, match="goes with the 'answer' outcome"):
        q.decide("w1", "deny", who="x", channel="cli", answer="no")
    assert q.get("q1").pending and q.get("w1").pending  # refusals changed nothing
    longest = "é" * MAX_ANSWER_CHARS  # the bound is in characters, not bytes
    record = q.decide("q1", "answer", who="ann", channel="widget", answer=longest)
    assert record.state == "approved" and record.answer == longest and record.is_question
    assert record.shown_state == "answered"
    assert f"answered ({MAX_ANSWER_CHARS:,} characters) by ann via widget" in record.outcome_text()
    table = format_table(q.listing())
    assert "é" not in table  # the listing names the length, never the text
    q.submit(Req("q2", capability="human:ask", summary="Anything else?"))
    assert "cave approvals answer ID TEXT" in format_table(q.listing())
    assert q.decide("q2", "deny", who="ann", channel="cli").shown_state == "declined"
