"""The ``approvals.db`` file: its one table, and the upgrade of databases made by older versions.

Kept apart from the queue so the storage format (what a terminal on the same session directory
must agree on) is one short page. Upgrading only ever adds columns (nullable or with a default)
when a database is opened; nothing is dropped or renamed.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

__all__ = ["COLUMNS", "open_database"]

_TABLE = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    capability TEXT NOT NULL,
    summary TEXT NOT NULL,
    details TEXT NOT NULL,
    code_line TEXT,
    created_at REAL NOT NULL,
    deadline REAL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN {states}),
    scope TEXT CHECK (scope IS NULL OR scope IN ('once', 'session')),
    decided_by TEXT,
    channel TEXT,
    decided_at REAL,
    reason TEXT,
    audited INTEGER NOT NULL DEFAULT 0,
    on_timeout TEXT,
    answer TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state, seq);
"""
_ADDED_COLUMNS = (
    ("audited", "INTEGER NOT NULL DEFAULT 0"),
    ("on_timeout", "TEXT"),
    ("answer", "TEXT"),
)
"""Columns added after the first release: a database from before gets them on open."""

COLUMNS = (
    "seq, id, capability, summary, details, code_line, created_at, deadline, owner, state, scope, "
    "decided_by, channel, decided_at, reason, on_timeout, answer"
)
"""The columns a record is read from, in the order of ``ApprovalRecord``'s fields."""


def open_database(path: Path, states: Sequence[str]) -> sqlite3.Connection:
    """Open (creating it mode 0600) and upgrade the queue database; ``states`` are the allowed ones.

    The connection is in autocommit mode (the caller writes under ``BEGIN IMMEDIATE``) and may be
    used from any thread, so the caller must serialise its use.
    """
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_TABLE.format(states="(" + ", ".join(f"'{s}'" for s in states) + ")"))
    columns = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    for name, declaration in _ADDED_COLUMNS:
        if name not in columns:  # a database from before the column existed
            db.execute(f"ALTER TABLE requests ADD COLUMN {name} {declaration}")
    return db
