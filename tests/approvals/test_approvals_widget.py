"""The widget's content and behaviour, outside a kernel (the kernel tests click it for real)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from cave.approvals._queue import ApprovalQueue, ApprovalRecord
from cave.approvals._widget import ApprovalView, describe_html, describe_text


def _record(
    tmp_path: Path, details: dict[str, object], capability: str, summary: str, rid: str = "w1"
) -> ApprovalRecord:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Req:
        id: str
        capability: str
        summary: str
        details: dict[str, object]
        code_line: str | None
        created_at: float

    queue = ApprovalQueue.in_directory(tmp_path)
    line = "fs.write('/tmp/outside/x.txt', payload)"
    return queue.submit(Req(rid, capability, summary, details, line, time.time()))


def test_write_request_shows_path_size_hash_and_escaped_preview(tmp_path: Path) -> None:
    content = "<script>alert(1)</script>\nsecond line\n"
    digest = hashlib.sha256(content.encode()).hexdigest()
    record = _record(
        tmp_path,
        {"path": "/tmp/outside/x.txt", "bytes": 40_000, "sha256": digest, "preview": content},
        "fs.write:/tmp/outside/x.txt",
        "write 40,000 bytes to /tmp/outside/x.txt",
    )
    page = describe_html(record)
    assert "/tmp/outside/x.txt" in page and digest in page and "40,000" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "fs.write(&#x27;/tmp/outside/x.txt&#x27;, payload)" in page
    text = describe_text(record)
    assert "bytes: 40,000" in text and f"sha256: {digest}" in text
    assert "| second line" in text and "cave approvals approve w1" in text


def test_shell_and_network_requests_show_argv_cwd_method_url(tmp_path: Path) -> None:
    shell = _record(
        tmp_path,
        {"argv": ["git", "push", "origin"], "cwd": "/work/repo"},
        "shell:git",
        "run git push origin",
    )
    assert "git push origin" in describe_text(shell) and "cwd: /work/repo" in describe_text(shell)
    net = _record(
        tmp_path,
        {"method": "POST", "url": "https://api.example.com/v1?q=1&r=2"},
        "net:api.example.com",
        "POST https://api.example.com/v1",
        rid="n1",
    )
    page = describe_html(net)
    assert "POST" in page and "https://api.example.com/v1?q=1&amp;r=2" in page


def test_buttons_call_back_once_then_settle_and_stop_being_clickable(tmp_path: Path) -> None:
    record = _record(tmp_path, {"path": "/x"}, "fs.write:/x", "write 1 byte to /x")
    clicks: list[str] = []
    view = ApprovalView(record, clicks.append)
    labels = [b.description for b in view.buttons.values()]
    assert labels == ["Approve once", "Approve for this session", "Deny"]
    bundle = view.bundle()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == view.model_id
    assert "write 1 byte to /x" in bundle["text/plain"]

    view.buttons["deny"].click()
    assert clicks == ["deny"]
    queue = ApprovalQueue.in_directory(tmp_path)
    decided = queue.decide("w1", "deny", who="alice", channel="widget")
    view.settle(decided)
    assert all(b.disabled for b in view.buttons.values())
    assert "denied by alice via widget at" in view.status.value
    view.buttons["approve_once"].click()  # a stale frontend's late click
    assert clicks == ["deny"]
    assert "denied by alice" in view.bundle()["text/plain"]


def test_question_view_sends_the_typed_text_and_shows_problems(tmp_path: Path) -> None:
    from cave.approvals._widget import QuestionView

    record = _record(tmp_path, {"question": "Which sheet?"}, "human:ask", "Which sheet?", "q1")
    sent: list[str | None] = []

    def on_answer(text: str | None) -> str | None:
        sent.append(text)
        return "An empty answer: type the answer" if text == "" else None

    view = QuestionView(record, on_answer)
    assert [b.description for b in view.buttons.values()] == ["Send", "Decline"]
    assert "The agent asks you" in view.details.value
    assert "cave approvals answer q1 TEXT" in view.bundle()["text/plain"]
    view.buttons["answer"].click()  # nothing typed yet
    assert sent == [""] and "An empty answer" in view.status.value
    view.text.value = "the second one"
    view.buttons["answer"].click()
    assert sent == ["", "the second one"]
    answered = ApprovalQueue.in_directory(tmp_path).decide(
        "q1", "answer", who="ann", channel="widget", answer="the second one"
    )
    view.settle(answered)
    assert view.text.disabled and view.text.value == "" and view.settled
    assert "answered (14 characters) by ann via widget" in view.status.value
    assert "the second one" not in view.bundle()["text/plain"]
    view.buttons["deny"].click()  # late click on a settled view
    assert sent == ["", "the second one"]


def test_a_timed_request_says_when_it_expires_and_what_happens_then(tmp_path: Path) -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Timed:
        id: str = "t1"
        capability: str = "net:example.com:443"
        summary: str = "GET https://example.com/"
        details: dict[str, object] | None = None
        code_line: str | None = None
        created_at: float = time.time()
        on_timeout: str = "allow"

    queue = ApprovalQueue.in_directory(tmp_path)
    record = queue.submit(Timed(details={}), timeout=300)  # type: ignore[arg-type]
    assert "then allow" in describe_text(record)
    view = ApprovalView(record, lambda _o: None)
    assert "then allow" in view.status.value and "Waiting for your decision" in view.status.value
