"""The decision engine while it asks: the interrupt window and the policy's ask timeouts."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from security_helpers import BlockingChannel, ListSink

from cave.security._capabilities import Capability
from cave.security._engine import TIMEOUT_GRACE_S, SessionAuthority
from cave.security._policy import Policy


def _authority(tmp_path: Path, channel: object, **kwargs: object) -> SessionAuthority:
    ws = Path(os.path.realpath(tmp_path))
    return SessionAuthority(
        workspace=ws, policy=Policy.default(ws), channel=channel, audit=ListSink(), **kwargs
    )


def test_an_interrupt_right_after_the_helper_thread_starts_cancels_its_request(
    tmp_path: Path,
) -> None:
    """The stop button can land between starting the channel's thread and waiting for it."""
    channel = BlockingChannel()

    def start_then_interrupted(fn: Callable[[], None]) -> None:
        threading.Thread(target=fn, daemon=True).start()
        raise KeyboardInterrupt

    authority = _authority(tmp_path, channel, start_thread=start_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        authority.authorize(Capability("fs.read", "/etc/hostname"), origin="t", summary="read")
    assert channel.saw_cancel.wait(5), "the channel was left waiting for a person"
    assert authority.cancel_pending() == 0


def _timed(tmp_path: Path, rule: str, channel: object | None = None) -> SessionAuthority:
    from cave.approvals._channel import KernelApprovalChannel
    from cave.approvals._queue import ApprovalQueue
    from cave.security._policy import parse_rule

    ws = Path(os.path.realpath(tmp_path))
    if channel is None:
        channel = KernelApprovalChannel(ApprovalQueue.in_directory(tmp_path), audit=ListSink())
    return SessionAuthority(
        workspace=ws,
        policy=Policy.default(ws).with_rules(parse_rule(rule)),
        channel=channel,
        audit=ListSink(),
    )


def test_an_ask_timeout_expires_the_request_and_denies(tmp_path: Path) -> None:
    authority = _timed(tmp_path, "ask net:example.com timeout=0.3")
    started = time.monotonic()
    with pytest.raises(PermissionError) as info:
        authority.authorize(Capability("net", "example.com:443"), origin="net.fetch", summary="GET")
    waited = time.monotonic() - started
    assert 0.3 <= waited < 0.3 + TIMEOUT_GRACE_S  # the channel expired it, not the backstop
    assert "policy's timeout of 0.3 s" in str(info.value) and "deny on timeout" in str(info.value)
    (record,) = authority.channel.queue.recent()
    assert record.state == "expired" and record.channel == "timeout"
    assert record.reason == "no decision within 0.3 s; the policy says deny on timeout"
    (approval,) = authority.audit.of("approval")
    assert approval["decision"] == "expired" and approval["timeout_s"] == 0.3
    assert approval["on_timeout"] == "deny"
    decided = authority.channel.audit.of("approval.decided")
    assert decided[0]["state"] == "expired" and decided[0]["timeout_s"] == 0.3


def test_on_timeout_allow_lets_the_operation_through_without_a_grant(tmp_path: Path) -> None:
    authority = _timed(tmp_path, "ask net:example.com timeout=0.2 on_timeout=allow")
    cap = Capability("net", "example.com:443")
    permit = authority.authorize(cap, origin="net.fetch", summary="GET")
    assert permit.via == "timeout" and permit.grant is None
    assert "on_timeout=allow" in permit.reason
    (record,) = authority.channel.queue.recent()
    assert record.state == "expired" and "the policy says allow on timeout" in (record.reason or "")
    assert authority.grants() == ()  # the next use asks again
    assert authority.audit.of("approval")[0]["on_timeout"] == "allow"


def test_a_person_who_answers_before_the_deadline_decides(tmp_path: Path) -> None:
    authority = _timed(tmp_path, "ask net:example.com timeout=30 on_timeout=allow")
    queue = authority.channel.queue

    def deny_when_asked() -> None:
        while not queue.pending():
            time.sleep(0.01)
        authority.channel.deliver(queue.pending()[0].id, "deny", who="ann", channel="control")

    threading.Thread(target=deny_when_asked, daemon=True).start()
    with pytest.raises(PermissionError, match="a person denied it"):
        authority.authorize(Capability("net", "example.com:443"), origin="t", summary="GET")


def test_a_channel_that_ignores_timeouts_is_stopped_by_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cave.security._engine as engine

    monkeypatch.setattr(engine, "TIMEOUT_GRACE_S", 0.2)
    channel = BlockingChannel()  # waits for `cancelled` only, like ConsoleChannel
    authority = _timed(tmp_path, "ask net:example.com timeout=0.2", channel)
    started = time.monotonic()
    with pytest.raises(PermissionError, match="timeout of 0.2 s"):
        authority.authorize(Capability("net", "example.com:443"), origin="t", summary="GET")
    assert channel.saw_cancel.is_set() and time.monotonic() - started < 5
    assert authority.audit.of("approval")[0]["decision"] == "expired"


def test_a_timeout_change_is_audited_as_a_policy_change(tmp_path: Path) -> None:
    from cave.security._policy import parse_rule

    authority = _timed(tmp_path, "ask net:* timeout=30")
    authority.set_policy(authority.policy.with_rules(parse_rule("ask net:* timeout=60")))
    (change,) = authority.audit.of("policy.change")
    assert change["added"] == ["ask net:* timeout=60 on_timeout=deny"]
    assert change["removed"] == ["ask net:* timeout=30 on_timeout=deny"]
