"""The approval queue: every request the agent made, persisted in SQLite (WAL) in the session dir.

Why a database and not memory: a request must outlive the kernel that asked (so a restart can say
it *expired* rather than silently forget it), and a terminal (``cave approvals approve ID``) must be
able to decide for a kernel it shares nothing with but the session directory.

States: ``pending -> approved | denied | expired | cancelled``. A transition happens once, under
``BEGIN IMMEDIATE`` with ``WHERE state = 'pending'``, so when two channels answer (a widget click
and the CLI, say) exactly one wins and the other gets :class:`AlreadyDecided`. Order is FIFO: the
``seq`` column is the order of submission within the database (one database per session).

What this module guarantees, exactly:

* A decision is durable once :meth:`ApprovalQueue.decide` returns (WAL, ``synchronous=NORMAL``:
  durable across a process crash; an OS crash may lose the last transactions).
* A request left ``pending`` by a kernel that is no longer running is turned into ``expired`` by
  :meth:`ApprovalQueue.expire_orphans` (called when a kernel, ``%approvals`` or the CLI opens the
  queue). Liveness is judged on the same host only (pid + process start time, so a reused pid does
  not look alive); a request owned by a kernel on another host is left alone.
* A request past its deadline (the policy's ``ask ... timeout=N``) is turned into ``expired`` by
  :meth:`ApprovalQueue.expire_overdue`, with the reason naming the timeout and what the policy
  does then (``on_timeout``: deny, or allow). The waiting kernel polls for it; so do ``%approvals``
  and the CLI.
* A free-text question (``human.ask``, capability ``human:ask``) is answered with the ``answer``
  outcome: the state becomes ``approved`` and the text is kept in the ``answer`` column, at most
  ``MAX_ANSWER_CHARS`` characters (a longer answer is refused, not cut). ``deny`` declines it;
  ``approve_once``/``approve_session`` are refused for a question.
* The database file is created mode 0600. Anyone who can write it can decide requests: the
  session directory's permissions (0700) are the access control, nothing here authenticates.

Beside it: ``_record`` (a row and its states), ``_schema`` (the table and the upgrade of old
databases), ``_owner`` (whether the kernel that asked is still running) and ``_render`` (the text
table of ``%approvals``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from .._errors import ApprovalError
from ._owner import Owner
from ._record import (
    MAX_ANSWER_CHARS,
    ON_TIMEOUT,
    OUTCOMES,
    QUESTION_PREFIX,
    STATES,
    ApprovalRecord,
)
from ._schema import COLUMNS, open_database

__all__ = [
    "DB_NAME",
    "MAX_ANSWER_CHARS",
    "QUESTION_PREFIX",
    "STATES",
    "AlreadyDecided",
    "ApprovalQueue",
    "ApprovalRecord",
    "RequestLike",
    "UnknownRequest",
]

DB_NAME = "approvals.db"
_MAX_DETAIL_CHARS = 4000
_MAX_SOURCE_CHARS = 1_000_000
"""A single detail value longer than this is cut when stored (previews are for people)."""


class RequestLike(Protocol):
    """What :meth:`ApprovalQueue.submit` reads from an ``ApprovalRequest`` (structural)."""

    @property
    def id(self) -> str: ...
    @property
    def capability(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def details(self) -> Mapping[str, Any]: ...
    @property
    def code_line(self) -> str | None: ...
    @property
    def created_at(self) -> float: ...


class UnknownRequest(ApprovalError, KeyError):
    """No request has this id (or prefix)."""

    def __init__(self, request_id: str, candidates: list[str] | None = None) -> None:
        self.request_id = request_id
        self.candidates = candidates or []
        if self.candidates:
            problem = f"{request_id!r} matches several requests: {', '.join(self.candidates)}"
            fix = "Give more characters of the id."
        else:
            problem = f"No approval request with id {request_id!r}"
            fix = "List them with `cave approvals list` or `%approvals`."
        super().__init__(f"{problem}. {fix}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class AlreadyDecided(ApprovalError):
    """The request left ``pending`` before this decision arrived; nothing was changed."""

    def __init__(self, record: ApprovalRecord) -> None:
        self.record = record
        self.request_id = record.id
        self.state = record.state
        super().__init__(
            f"Request {record.id} is already {record.outcome_text()}; nothing changed. "
            "Only pending requests can be decided (see `cave approvals list`)."
        )


def _record(row: tuple[Any, ...]) -> ApprovalRecord:
    values = list(row)
    values[4] = json.loads(values[4])
    return ApprovalRecord(*values)


def _bounded(value: Any, depth: int = 0, limit: int = _MAX_DETAIL_CHARS) -> Any:
    """JSON-safe copy of ``value`` with long strings cut (details are shown, never executed).

    A top-level ``source`` (code a person approves before it runs: a tool's registration) is
    kept whole up to ``_MAX_SOURCE_CHARS``: the approver must see all of what they approve.
    """
    if isinstance(value, str):
        if len(value) > limit:
            return value[:limit] + f"... [{len(value) - limit:,} more]"
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth < 4 and isinstance(value, Mapping):
        return {
            str(k): _bounded(
                v, depth + 1, _MAX_SOURCE_CHARS if depth == 0 and k == "source" else limit
            )
            for k, v in list(value.items())[:100]
        }
    if depth < 4 and isinstance(value, (list, tuple)):
        return [_bounded(v, depth + 1) for v in value[:100]]
    if isinstance(value, bytes):
        return _bounded(value.decode("utf-8", "replace"), depth)
    return _bounded(repr(value), depth)


class ApprovalQueue:
    """The persisted FIFO of approval requests of one session. Safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str], *, owner: Owner | None = None) -> None:
        self.path = Path(path)
        self.owner = owner or Owner.this_process()
        # One connection, shared under a lock: it is opened here, outside agent code, so deciding
        # later opens no file (the in-process guard sees no new `open`).
        self._db = open_database(self.path, STATES)
        self._lock = threading.RLock()

    @classmethod
    def in_directory(
        cls, session_dir: str | os.PathLike[str], *, owner: Owner | None = None
    ) -> ApprovalQueue:
        """The queue of the session stored in ``session_dir`` (``approvals.db`` there)."""
        return cls(Path(session_dir) / DB_NAME, owner=owner)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ApprovalQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writing ----------------------------------------------------------------------------
    def submit(
        self,
        request: RequestLike,
        *,
        timeout: float | None = None,
        on_timeout: str | None = None,
    ) -> ApprovalRecord:
        """Persist ``request`` as pending (at the end of the FIFO) and return its row.

        ``timeout`` (seconds from ``request.created_at``) sets the deadline; ``on_timeout``
        (default: ``request.on_timeout`` if it has one, else ``deny``) is what it will say then.
        """
        deadline = request.created_at + timeout if timeout is not None else None
        then = on_timeout or getattr(request, "on_timeout", None) or "deny"
        if then not in ON_TIMEOUT:
            raise ApprovalError(f"on_timeout must be deny or allow, not {then!r}.")
        details = json.dumps(_bounded(dict(request.details)), ensure_ascii=False)
        with self._write() as db:
            db.execute(
                "INSERT INTO requests (id, capability, summary, details, code_line, created_at, "
                "deadline, owner, on_timeout) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.id,
                    request.capability,
                    request.summary,
                    details,
                    request.code_line,
                    request.created_at,
                    deadline,
                    str(self.owner),
                    then if deadline is not None else None,
                ),
            )
        return self.get(request.id)

    def decide(
        self,
        request_id: str,
        outcome: str,
        *,
        who: str,
        channel: str,
        reason: str | None = None,
        now: float | None = None,
        answer: str | None = None,
    ) -> ApprovalRecord:
        """Move a pending request to ``outcome`` (a key of ``OUTCOMES``); first caller wins.

        ``request_id`` may be a unique prefix. ``answer`` is the text for the ``answer`` outcome
        (questions only; ``check_answer`` says what is refused). Raises :class:`UnknownRequest`,
        :class:`AlreadyDecided` or ``ApprovalError``; on success returns the updated row.
        """
        if outcome not in OUTCOMES:
            raise ApprovalError(
                f"Unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}."
            )
        if outcome == "answer":
            check_answer(answer)
        elif answer is not None:
            raise ApprovalError(f"An answer text goes with the 'answer' outcome, not {outcome!r}.")
        state, scope = OUTCOMES[outcome]
        with self._write() as db:
            full_id = self._resolve(request_id)
            row = db.execute("SELECT capability FROM requests WHERE id = ?", (full_id,)).fetchone()
            question = str(row[0]).startswith(QUESTION_PREFIX)
            if question and outcome in ("approve_once", "approve_session"):
                raise ApprovalError(
                    f"Request {full_id} is a question from the agent: answer it with "
                    f"`cave approvals answer {full_id} TEXT` (or `%approvals answer`), or "
                    "decline it with `deny`."
                )
            if outcome == "answer" and not question:
                raise ApprovalError(
                    f"Request {full_id} asks for approval, not for an answer: use approve or deny."
                )
            changed = db.execute(
                "UPDATE requests SET state = ?, scope = ?, decided_by = ?, channel = ?, "
                "decided_at = ?, reason = ?, answer = ? WHERE id = ? AND state = 'pending'",
                (
                    state,
                    scope,
                    who,
                    channel,
                    time.time() if now is None else now,
                    reason,
                    answer,
                    full_id,
                ),
            ).rowcount
        record = self.get(full_id)
        if not changed:
            raise AlreadyDecided(record)
        return record

    def expire_orphans(self) -> list[ApprovalRecord]:
        """Expire pending requests whose kernel is gone (same host only); return them."""
        expired: list[ApprovalRecord] = []
        for record in self.pending():
            owner = Owner.parse(record.owner)
            if owner == self.owner or owner.alive() is not False:
                continue
            reason = (
                f"the kernel that asked (pid {owner.pid}) stopped before anyone decided; "
                "nothing was run. Ask the agent again if still wanted"
            )
            try:
                expired.append(
                    self.decide(record.id, "expire", who="cave", channel="restart", reason=reason)
                )
            except AlreadyDecided:
                pass
        return expired

    def expire_overdue(self, now: float | None = None) -> list[ApprovalRecord]:
        """Expire pending requests past their deadline (policy timeout); return them."""
        now = time.time() if now is None else now
        expired: list[ApprovalRecord] = []
        for record in self.pending():
            if record.deadline is None or record.deadline > now:
                continue
            waited = record.deadline - record.created_at
            reason = (
                f"no decision within {waited:g} s; the policy says "
                f"{record.on_timeout or 'deny'} on timeout"
            )
            try:
                expired.append(
                    self.decide(
                        record.id, "expire", who="cave", channel="timeout", reason=reason, now=now
                    )
                )
            except AlreadyDecided:
                pass
        return expired

    def mark_audited(self, request_id: str) -> None:
        """Note that the decision of ``request_id`` is in the audit log (see ``unaudited``)."""
        with self._write() as db:
            db.execute("UPDATE requests SET audited = 1 WHERE id = ?", (request_id,))

    def unaudited(self) -> list[ApprovalRecord]:
        """Decided requests whose decision no kernel has written to the audit log yet.

        A request expired by ``cave approvals list`` (which has no audit log) while its kernel was
        dead is one; the next kernel's sweep records it.
        """
        with self._lock:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM requests WHERE state != 'pending' AND audited = 0 "
                "ORDER BY seq"
            ).fetchall()
        return [_record(r) for r in rows]

    # -- reading ----------------------------------------------------------------------------
    def _resolve(self, request_id: str) -> str:
        rows = self._db.execute(
            "SELECT id FROM requests WHERE id = ? UNION SELECT id FROM requests "
            "WHERE substr(id, 1, ?) = ? LIMIT 6",
            (request_id, len(request_id), request_id),
        ).fetchall()
        ids = sorted({r[0] for r in rows})
        if request_id in ids:
            return request_id
        if len(ids) == 1 and request_id:
            return str(ids[0])
        raise UnknownRequest(request_id, ids if request_id else [])

    def get(self, request_id: str) -> ApprovalRecord:
        """The row for ``request_id`` (or a unique prefix of it)."""
        with self._lock:
            full_id = self._resolve(request_id)
            row = self._db.execute(
                f"SELECT {COLUMNS} FROM requests WHERE id = ?", (full_id,)
            ).fetchone()
        return _record(row)

    def state(self, request_id: str) -> str:
        """Just the state (the cheap read a waiting channel polls)."""
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM requests WHERE id = ?", (request_id,)
            ).fetchone()
        if row is None:
            raise UnknownRequest(request_id)
        return str(row[0])

    def pending(self) -> list[ApprovalRecord]:
        """Pending requests, oldest first (the FIFO)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM requests WHERE state = 'pending' ORDER BY seq"
            ).fetchall()
        return [_record(r) for r in rows]

    def recent(self, limit: int = 20) -> list[ApprovalRecord]:
        """The last ``limit`` requests in any state, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM requests ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_record(r) for r in reversed(rows)]

    def listing(self, limit: int = 20) -> list[ApprovalRecord]:
        """Every pending request plus the last ``limit`` decided ones, in FIFO order."""
        by_seq = {r.seq: r for r in self.recent(limit)}
        by_seq.update({r.seq: r for r in self.pending()})
        return [by_seq[k] for k in sorted(by_seq)]


def check_answer(answer: str | None) -> str:
    """``answer`` if it can be stored as an answer; ``ApprovalError`` saying why not."""
    if not isinstance(answer, str) or not answer.strip():
        raise ApprovalError(
            "An empty answer: type the answer, or decline the question with `deny`."
        )
    if len(answer) > MAX_ANSWER_CHARS:
        raise ApprovalError(
            f"The answer is {len(answer):,} characters; the limit is {MAX_ANSWER_CHARS:,}. "
            "Shorten it, or write it to a file in the workspace and answer with the file's path."
        )
    return answer

