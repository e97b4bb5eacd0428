"""The audit log: append-only JSON lines, each record chained to the one before by SHA-256.

Each line is one JSON object with sorted keys::

    {"hash": H(n), "kind": "primitive", "prev": H(n-1), "seq": n, "ts": 1712.5, ...fields}

``hash`` is the SHA-256 of the record's canonical JSON *without* the ``hash`` key; ``prev`` is
the ``hash`` of the previous record (64 zeros for the first). A sidecar file ``<log>.head`` holds
the last ``seq`` and ``hash``, rewritten in place after every append.

What ``verify`` detects, and reports with the first bad line: an edited record (its own hash no
longer matches), a deleted or reordered record (``prev``/``seq`` no longer follow), a torn or
garbled line, and a truncated tail (the log ends before the head says it should).

What it does not: the chain has no key. Someone who can write the file *and* recompute every
hash after the edit, and rewrite the head, produces a log that verifies. Keep a copy of the head
somewhere else (checkpoints record it) to catch that. Records are written with ``os.write`` on a
descriptor opened once, so appending raises no Python audit events (the guard need not allow the
agent's thread to open the log), and durability is the page cache's unless ``fsync=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .._errors import AuditChainBroken

__all__ = [
    "GENESIS",
    "AuditLog",
    "AuditSink",
    "ChainedAuditSink",
    "VerifyReport",
    "format_records",
    "verify",
]

GENESIS = "0" * 64
_HEAD_SIZE = 160


@runtime_checkable
class AuditSink(Protocol):
    """Where records go. May be called from the agent's worker thread while the guard is on,
    so an implementation must not open files or sockets per call (open them up front)."""

    def record(self, kind: str, /, **fields: Any) -> None: ...


class ChainedAuditSink(AuditSink, Protocol):
    """An audit sink with a hash chain, whose head a checkpoint records (``AuditLog`` is one)."""

    @property
    def head(self) -> tuple[int, str]: ...


def _canonical(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class AuditLog:
    """An append-only, hash-chained JSON-lines file. Implements ``AuditSink``; thread-safe."""

    def __init__(self, path: Path | str, *, fsync: bool = False) -> None:
        """Open (or create, mode 0600) the log and continue its chain.

        Raises ``AuditChainBroken`` if the existing last line is not a valid record (a torn
        write, or tampering): start a new log rather than chain onto something unverifiable.
        """
        self.path = Path(path)
        self.head_path = Path(str(self.path) + ".head")
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._hash = self._tail()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o600)
        self._head_fd = os.open(
            self.head_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600
        )

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record: store it elsewhere to detect a rewritten log."""
        return self._seq, self._hash

    def record(self, kind: str, /, **fields: Any) -> None:
        """Append one record. Refused (PermissionError) from agent code while the guard is on."""
        if _called_by_agent():
            reason = "agent code may not write audit records; Cave records what it does by itself"
            self._append(
                {
                    "kind": "guard.refused",
                    "event": "audit.record",
                    "reason": reason,
                    "attempted": str(kind)[:100],
                }
            )
            raise PermissionError(reason)
        body: dict[str, Any] = dict(fields)
        body["kind"] = kind
        self._append(body)

    def _append(self, body: dict[str, Any]) -> None:
        body["ts"] = round(time.time(), 6)
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"audit log {self.path} is closed")
            body["seq"] = self._seq + 1
            body["prev"] = self._hash
            plain = json.loads(_canonical(body))  # fields become plain JSON values first
            digest = _digest(_canonical(plain))
            plain["hash"] = digest
            line = (_canonical(plain) + "\n").encode("ascii")
            _write_all(self._fd, line)
            self._seq, self._hash = plain["seq"], digest
            head = json.dumps({"seq": self._seq, "hash": digest}).encode("ascii")
            os.pwrite(self._head_fd, head.ljust(_HEAD_SIZE, b" ") + b"\n", 0)
            if self.fsync:
                os.fsync(self._fd)
                os.fsync(self._head_fd)

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._head_fd):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._head_fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tail(self) -> tuple[int, str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0, GENESIS
        if size == 0:
            return 0, GENESIS
        with open(self.path, "rb") as f:
            f.seek(max(0, size - 65536))
            chunk = f.read()
        lines = chunk.splitlines()
        number = _count_lines(self.path)
        if not chunk.endswith(b"\n"):
            raise AuditChainBroken(str(self.path), number, "the last record is incomplete")
        record, problem = _check_line(lines[-1])
        if record is None:
            raise AuditChainBroken(str(self.path), number, problem or "bad record")
        return int(record["seq"]), str(record["hash"])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _called_by_agent() -> bool:
    """Ask the guard (if installed) whether this thread is running agent code."""
    box: list[Any] = []
    sys.audit("cave.security", "is_agent", (), box)
    return bool(box and box[0])


def _check_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "not a JSON record (garbled or torn line)"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    for key, typ in (("hash", str), ("prev", str), ("seq", int), ("kind", str)):
        if not isinstance(record.get(key), typ):
            return None, f"the record has no valid {key!r}"
    body = dict(record)
    claimed = body.pop("hash")
    if _digest(_canonical(body)) != claimed:
        return None, "the record was edited (its hash does not match its content)"
    return record, None


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found."""

    path: str
    records: int
    """Records that verified, from the start."""
    ok: bool
    line: int | None = None
    """The first bad line (1-based), when not ok."""
    problem: str | None = None
    head_checked: bool = False
    """False when there was no head file, so a truncated tail could not be detected."""
    last_hash: str = GENESIS
    kinds: dict[str, int] = field(default_factory=dict)

    def error(self) -> AuditChainBroken | None:
        """The failure as the exception ``cave audit verify`` reports, or None."""
        if self.ok:
            return None
        return AuditChainBroken(self.path, self.line or 0, self.problem or "broken")

    def __str__(self) -> str:
        if self.ok:
            head = "" if self.head_checked else " (no head file: a truncated tail goes unnoticed)"
            return f"{self.path}: OK, {self.records} records, chain intact{head}"
        return str(self.error())


def verify(path: Path | str, *, expected_head: tuple[int, str] | None = None) -> VerifyReport:
    """Check the whole chain of the log at ``path``; never raises for a broken log.

    ``expected_head`` (seq, hash), e.g. from a checkpoint, overrides the head file.
    """
    path = Path(path)
    kinds: dict[str, int] = {}
    prev, seq, count, line_no = GENESIS, 0, 0, 0
    head = expected_head if expected_head is not None else _read_head(path)
    hash_at_head: str | None = None

    def bad(line: int, problem: str) -> VerifyReport:
        return VerifyReport(str(path), count, False, line, problem, False, prev, kinds)

    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return VerifyReport(str(path), 0, False, 0, "the log file does not exist")
    with f:
        for raw in f:
            line_no += 1
            if not raw.endswith(b"\n"):
                return bad(line_no, "the last record is incomplete (torn write or truncation)")
            record, problem = _check_line(raw.rstrip(b"\n"))
            if record is None:
                return bad(line_no, problem or "bad record")
            if record["seq"] != seq + 1:
                what = "deleted" if record["seq"] > seq + 1 else "repeated or reordered"
                return bad(
                    line_no, f"expected record {seq + 1} but found {record['seq']} ({what} records)"
                )
            if record["prev"] != prev:
                return bad(line_no, "the previous record's hash does not match (chain broken)")
            prev, seq = record["hash"], record["seq"]
            count += 1
            kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
            if head is not None and seq == head[0]:
                hash_at_head = prev
    if head is None:
        return VerifyReport(str(path), count, True, None, None, False, prev, kinds)
    head_seq, head_hash = head
    if head_seq < 0:
        return bad(line_no, "the head file is unreadable (edited?)")
    if head_seq > seq:
        return bad(
            line_no + 1,
            f"the log ends at record {seq} but its head says {head_seq}: the tail was truncated",
        )
    if hash_at_head != head_hash and head_seq > 0:
        return bad(head_seq, "this record does not match the head (the log was rewritten)")
    if head_seq < seq:
        return bad(
            head_seq + 1,
            f"records after the head ({head_seq}): appended outside Cave, or a crash between "
            "writing the record and the head",
        )
    return VerifyReport(str(path), count, True, None, None, True, prev, kinds)


def _read_head(path: Path) -> tuple[int, str] | None:
    try:
        raw = Path(str(path) + ".head").read_bytes()
    except FileNotFoundError:
        return None
    if not raw.strip():  # created, nothing appended yet (a log with records always has one)
        return (0, GENESIS)
    try:
        data = json.loads(raw)
        return int(data["seq"]), str(data["hash"])
    except (ValueError, KeyError, TypeError):
        return (-1, "")


def format_records(path: Path | str, *, tail: int | None = None) -> Iterator[str]:
    """One human line per record (for ``cave audit``): seq, time, kind, then the fields."""
    lines = Path(path).read_bytes().splitlines()
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    for raw in lines:
        try:
            record = json.loads(raw)
        except ValueError:
            yield f"?      {raw[:120]!r} (not a record)"
            continue
        ts = record.pop("ts", 0)
        seq = record.pop("seq", "?")
        kind = record.pop("kind", "?")
        for key in ("hash", "prev"):
            record.pop(key, None)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))
        rest = " ".join(f"{k}={_short(v)}" for k, v in record.items())
        yield f"{seq:>6} {when} {kind:<16} {rest}"


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
