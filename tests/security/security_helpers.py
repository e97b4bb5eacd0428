"""Shared pieces for the security tests: a scripted approval channel, an in-memory sink, and a
runner that executes code as agent code (in a worker thread, inside ``agent_code()``)."""

from __future__ import annotations

import itertools
import linecache
import os
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cave.approvals._protocol import ApprovalRequest, Decision
from cave.security import AuditLog, Policy, Security

_steps = itertools.count(1)


class ScriptedChannel:
    """Answers approval requests from a list (then ``default``), and remembers what was asked."""

    def __init__(self, *decisions: Decision, default: Decision = Decision.DENY) -> None:
        self.decisions = list(decisions)
        self.default = default
        self.requests: list[ApprovalRequest] = []
        self.answers: list[str | None] = []
        self.threads: list[int] = []

    def decide(self, request: ApprovalRequest, cancelled: threading.Event) -> Decision:
        self.requests.append(request)
        self.threads.append(threading.get_ident())
        return self.decisions.pop(0) if self.decisions else self.default

    def answer(self, request: ApprovalRequest, cancelled: threading.Event) -> str | None:
        self.requests.append(request)
        return self.answers.pop(0) if self.answers else None

    @property
    def capabilities(self) -> list[str]:
        return [r.capability for r in self.requests]


class BlockingChannel:
    """Blocks until cancelled (to test the stop button)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.saw_cancel = threading.Event()

    def decide(self, request: ApprovalRequest, cancelled: threading.Event) -> Decision:
        self.started.set()
        if cancelled.wait(30):
            self.saw_cancel.set()
            return Decision.CANCELLED
        return Decision.DENY


class ListSink:
    """An in-memory AuditSink."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def record(self, kind: str, /, **fields: Any) -> None:
        with self.lock:
            self.records.append((kind, fields))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.records]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for k, f in self.records if k == kind]


@dataclass
class Outcome:
    """What running a snippet as agent code produced."""

    namespace: dict[str, Any]
    error: BaseException | None = None
    trace: str = ""
    stdout: list[str] = field(default_factory=list)

    @property
    def denied(self) -> bool:
        return isinstance(self.error, PermissionError)


@dataclass
class Session:
    """A Security instance over a fresh workspace with a real audit log."""

    workspace: Path
    security: Security
    channel: Any
    log: AuditLog

    def run(self, code: str, **names: Any) -> Outcome:
        """Run ``code`` as agent code in a worker thread; return its namespace and error."""
        ns: dict[str, Any] = dict(self.security.primitives)
        ns.update(names)
        ns["__name__"] = "__agent__"
        out = Outcome(ns)

        filename = f"<cave-test-agent-{next(_steps)}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)

        def worker() -> None:
            try:
                with self.security.agent_code():
                    exec(compile(code, filename, "exec"), ns)
            except BaseException as exc:  # noqa: B036
                out.error = exc
                out.trace = traceback.format_exc()

        t = threading.Thread(target=worker, name="agent-worker")
        t.start()
        t.join(60)
        assert not t.is_alive(), "agent code did not finish"
        return out

    def records(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(x) for x in self.log.path.read_text().splitlines()]

    def kinds(self) -> list[str]:
        return [r["kind"] for r in self.records()]


def make_session(
    tmp: Path, channel: Any = None, policy: Policy | None = None, **kwargs: Any
) -> Session:
    ws = Path(os.path.realpath(tmp)) / "ws"
    ws.mkdir(parents=True, exist_ok=True)
    log = AuditLog(ws / ".cave" / "audit.jsonl")
    chan = channel if channel is not None else ScriptedChannel()
    sec = Security(
        workspace=ws,
        policy=policy if policy is not None else Policy.default(ws),
        channel=chan,
        audit=log,
        **kwargs,
    )
    return Session(ws, sec, chan, log)
