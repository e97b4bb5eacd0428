"""The ``approvals.db`` format: a database written before later columns existed still opens and
works, and the table refuses states the queue does not know."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from test_approvals_queue import Req

from cave.approvals._owner import Owner
from cave.approvals._queue import STATES, ApprovalQueue

# The table as the first release created it: no audited, on_timeout or answer column.
FIRST_RELEASE = """
CREATE TABLE requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    capability TEXT NOT NULL,
    summary TEXT NOT NULL,
    details TEXT NOT NULL,
    code_line TEXT,
    created_at REAL NOT NULL,
    deadline REAL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN
        ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    scope TEXT CHECK (scope IS NULL OR scope IN ('once', 'session')),
    decided_by TEXT,
    channel TEXT,
    decided_at REAL,
    reason TEXT
);
CREATE INDEX requests_by_state ON requests (state, seq);
"""


def _old_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(FIRST_RELEASE)
    rows = [
        ("oldpend1", "fs.write:/tmp/x", "pending", None, None),
        ("oldask01", "human:ask", "pending", None, None),
        ("olddone1", "net:example.com:443", "approved", "once", "alice"),
    ]
    for rid, capability, state, scope, who in rows:
        db.execute(
            "INSERT INTO requests (id, capability, summary, details, created_at, owner, state, "
            "scope, decided_by) VALUES (?, ?, 'old', '{}', ?, ?, ?, ?, ?)",
            (rid, capability, time.time(), str(Owner.this_process()), state, scope, who),
        )
    db.commit()
    db.close()


def test_a_first_release_database_gets_the_new_columns_on_open(tmp_path: Path) -> None:
    _old_database(tmp_path / "approvals.db")
    with ApprovalQueue.in_directory(tmp_path) as q:
        assert [r.id for r in q.pending()] == ["oldpend1", "oldask01"]
        old = q.get("oldpend1")
        assert (old.on_timeout, old.answer) == (None, None)
        # Decided before the audited column existed: counted as not yet in the audit log.
        assert [r.id for r in q.unaudited()] == ["olddone1"]
        # The added columns work on old rows and on new ones.
        answered = q.decide("oldask01", "answer", who="bob", channel="cli", answer="42")
        assert answered.answer == "42" and answered.shown_state == "answered"
        timed = q.submit(Req("newrow01", created_at=time.time()), timeout=30, on_timeout="allow")
        assert timed.on_timeout == "allow" and timed.deadline is not None
        q.mark_audited("olddone1")
    with ApprovalQueue.in_directory(tmp_path) as q:  # a second open adds nothing twice
        assert q.get("oldask01").answer == "42"
        assert q.unaudited() == [q.get("oldask01")]
    raw = sqlite3.connect(tmp_path / "approvals.db")
    columns = [row[1] for row in raw.execute("PRAGMA table_info(requests)")]
    raw.close()
    assert columns[-3:] == ["audited", "on_timeout", "answer"]
    assert len(columns) == len(set(columns)) == 18


def test_the_table_accepts_exactly_the_queue_states(tmp_path: Path) -> None:
    with ApprovalQueue.in_directory(tmp_path) as q:
        q.submit(Req("stateful"))
    raw = sqlite3.connect(tmp_path / "approvals.db", isolation_level=None)
    try:
        for state in STATES:
            raw.execute("UPDATE requests SET state = ? WHERE id = 'stateful'", (state,))
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            raw.execute("UPDATE requests SET state = 'maybe' WHERE id = 'stateful'")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            raw.execute("UPDATE requests SET scope = 'forever' WHERE id = 'stateful'")
    finally:
        raw.close()
