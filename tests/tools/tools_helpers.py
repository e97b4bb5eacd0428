"""Shared pieces of the tools tests: a secure session with real Deno, and agent code runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cave._session import Session
from cave.approvals._kernel_glue import make_channel
from cave.security import Policy

ECHO = """
/** Add one to x. */
export async function run(
  args: { x: number; note?: string }, cave: unknown,
): Promise<{ y: number }> {
  return { y: args.x + 1 };
}
"""


def make_session(workspace: Path, *rules: tuple[str, str]) -> Session:
    """A session whose approvals go to its real queue (decided with ``channel.deliver``)."""
    workspace.mkdir(parents=True, exist_ok=True)
    session = Session(workspace=workspace, channel_factory=make_channel, secure=True)
    security = session.ensure_security()
    if rules:
        security.with_policy(Policy.default(workspace).with_rules(*rules))
    return session


def records(session: Session, kind: str) -> list[dict[str, Any]]:
    import json

    with open(session.audit.path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [r for r in lines if r.get("kind") == kind]


class AgentRun:
    """``code`` run as agent code (inside ``agent_code()``, through the executor) in a thread."""

    def __init__(self, session: Session, code: str, timeout: float | None = 60) -> None:
        self.session = session
        self.result: Any = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(code, timeout), daemon=True)
        self.thread.start()

    def _run(self, code: str, timeout: float | None) -> None:
        self.started.set()
        with self.session.security.agent_code():
            self.result = self.session.runtime.run(code, timeout=timeout, echo=False)

    def join(self, timeout: float = 60) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "agent code did not finish"
        return self.result


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``predicate`` until it is truthy (an event we cannot subscribe to: a queue row)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{what} did not happen within {timeout} s")
