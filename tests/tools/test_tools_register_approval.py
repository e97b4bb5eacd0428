"""Agent code registering a tool: an approval request through the session's real queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tools_helpers import ECHO, AgentRun, make_session, records, wait_for

from cave._session import Session
from cave.approvals._queue import ApprovalRecord
from cave.approvals._widget import ApprovalView, describe_html, describe_text

LONG = ECHO + "".join(f"// line {i} of a long tool: the approver sees it\n" for i in range(300))


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    s = make_session(tmp_path_factory.mktemp("tools-approval-ws"))
    yield s
    s.tools.close()
    s.security.close()


def _pending(session: Session) -> ApprovalRecord:
    return wait_for(lambda: next(iter(session.approvals.queue.pending()), None), "a request")


def test_agent_registration_waits_for_approval_then_the_agent_calls_it(session: Session) -> None:
    session.runtime.inject("source", LONG)
    code = (
        "sig = tools.register('plus_one', source, ['fs.read:data/**'], 'adds one')\n"
        "print(sig)\nprint(tools.plus_one(x=1))\n"
    )
    run = AgentRun(session, code)
    request = _pending(session)
    assert request.capability == "tool:plus_one"
    assert request.details["source"] == LONG  # in full, not cut like other details
    assert request.details["capabilities"] == "fs.read:data/**"
    assert request.code_line == "tools.register('plus_one', ...) in the agent's code"
    html = describe_html(request)
    assert "cave-approval-source" in html and "overflow:auto" in html
    assert "line 299 of a long tool" in html and "<span" in html  # highlighted, all lines
    assert "line 299 of a long tool" in describe_text(request)
    ApprovalView(request, lambda outcome: None)  # the widget builds from the stored record
    session.approvals.deliver(request.id, "approve_once", who="tester", channel="test")
    result = run.join()
    assert result.error is None, result.error
    assert "plus_one(x: number, note?: string) -> Promise<{ y: number }>" in result.output
    assert "{'y': 2}" in result.output
    spec = session.tools.specs["plus_one"]
    assert spec.registered_by == "agent" and spec.source == LONG
    [approval] = [r for r in records(session, "approval") if r["id"] == request.id]
    assert approval["decision"] == "approve_once"
    assert records(session, "tool.register")[-1]["sha256"] == spec.digest
    assert "tools.plus_one(x: number, note?: string)" in session.runtime.manifest()


def test_a_denied_registration_raises_permission_error_and_registers_nothing(
    session: Session,
) -> None:
    run = AgentRun(session, "tools.register('nope', 'export async function run() {}')\n")
    request = _pending(session)
    session.approvals.deliver(request.id, "deny", who="tester", channel="test")
    result = run.join()
    assert "PermissionError" in result.error and "a person denied it" in result.error
    assert "nope" not in session.tools.specs


def test_approving_for_the_session_does_not_cover_a_different_source(session: Session) -> None:
    run = AgentRun(session, "tools.register('again', 'export async function run() { return 1 }')\n")
    first = _pending(session)
    session.approvals.deliver(first.id, "approve_session", who="tester", channel="test")
    assert run.join().error is None
    run = AgentRun(session, "tools.register('again', 'export async function run() { return 2 }')\n")
    second = _pending(session)  # asked again: the grant was for the first source's digest
    assert second.id != first.id
    session.approvals.deliver(second.id, "deny", who="tester", channel="test")
    assert "PermissionError" in run.join().error
    assert session.tools.call("again") == 1


def test_agent_code_cannot_register_through_the_user_api_without_asking(session: Session) -> None:
    from cave._session import peek_session, set_current_session

    code = "import cave\ncave.tools.register('sneaky', 'export async function run() {}')\n"
    previous = peek_session()
    set_current_session(session)
    try:
        run = AgentRun(session, code)
        request = _pending(session)
    finally:
        set_current_session(previous)
    assert request.capability == "tool:sneaky"
    session.approvals.deliver(request.id, "deny", who="tester", channel="test")
    assert "PermissionError" in run.join().error


def test_a_user_cell_registers_without_asking(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "tool.ts"
    path.write_text(ECHO)
    before = len(session.approvals.queue.listing(1000))
    spec = session.tools.register("from_file", path)
    assert spec.registered_by == "user" and spec.source == ECHO
    assert len(session.approvals.queue.listing(1000)) == before
