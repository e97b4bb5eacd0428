"""Primitives end to end: check -> maybe ask -> run -> audit, grants, channels, cancellation."""

from __future__ import annotations

import http.server
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from security_helpers import BlockingChannel, ScriptedChannel, Session, make_session

from cave.approvals._console import AutoDenyChannel, ConsoleChannel
from cave.approvals._protocol import ApprovalChannel, ApprovalRequest, Decision
from cave.security import AuditLog, Effect, Policy, Rule, Security, verify

ONCE, SESSION, DENY = Decision.APPROVE_ONCE, Decision.APPROVE_SESSION, Decision.DENY


# -- fs ------------------------------------------------------------------------------------
def test_fs_read_write_list_inside_the_workspace_without_asking(s: Session) -> None:
    out = s.run(
        "n = fs.write('out/../data.txt', 'héllo')\n"
        "text = fs.read('data.txt')\n"
        "raw = fs.read('data.txt', binary=True)\n"
        "fs.write('sub/x.bin', b'\\x00\\x01') if False else None\n"
        "listing = fs.list()\n"
    )
    assert out.error is None, out.trace
    assert out.namespace["n"] == len("héllo".encode())
    assert out.namespace["text"] == "héllo" and out.namespace["raw"] == "héllo".encode()
    assert "data.txt" in out.namespace["listing"] and ".cave/" in out.namespace["listing"]
    assert s.channel.requests == []
    prims = [r for r in s.records() if r["kind"] == "primitive"]
    assert [p["op"] for p in prims] == ["fs.write", "fs.read", "fs.read", "fs.list"]
    assert prims[0]["sha256"] and prims[0]["via"] == "policy" and prims[0]["ok"] is True
    assert verify(s.log.path).ok


def test_fs_read_outside_asks_and_denial_raises_permission_error(s: Session) -> None:
    out = s.run("fs.read('/etc/hostname')")
    assert out.denied and "a person denied it" in str(out.error)
    assert s.channel.capabilities == ["fs.read:/etc/hostname"]
    assert s.channel.threads[0] != threading.get_ident()  # asked on a helper thread
    rec = [r for r in s.records() if r["kind"] == "approval"][0]
    assert rec["decision"] == "deny" and rec["origin"] == "fs.read"


def test_write_request_carries_bytes_hash_and_preview(s: Session) -> None:
    target = s.workspace.parent / "outside.txt"
    s.channel.decisions = [ONCE]
    out = s.run(f"fs.write({str(target)!r}, 'hello world')")
    assert out.error is None, out.trace
    req = s.channel.requests[0]
    assert req.capability == f"fs.write:{target}"
    assert req.details["bytes"] == 11 and req.details["preview"] == "hello world"
    assert len(req.details["sha256"]) == 64 and "11 bytes" in req.summary
    assert req.code_line is not None and req.code_line.startswith("fs.write(")
    assert target.read_text() == "hello world"


def test_once_grant_is_consumed_only_on_success(s: Session) -> None:
    target = s.workspace.parent / "later" / "x.txt"  # the directory does not exist yet
    s.channel.decisions = [ONCE]
    first = s.run(f"fs.write({str(target)!r}, 'a')")
    assert isinstance(first.error, FileNotFoundError)
    assert len(s.channel.requests) == 1
    assert [g.scope for g in s.security.grants] == ["once"]  # put back: the write failed
    target.parent.mkdir()
    second = s.run(f"fs.write({str(target)!r}, 'b')")  # no new question
    assert second.error is None and len(s.channel.requests) == 1
    assert s.security.grants == ()  # consumed by the success
    third = s.run(f"fs.write({str(target)!r}, 'c')")
    assert third.denied and len(s.channel.requests) == 2


def test_session_grant_covers_later_uses(s: Session) -> None:
    s.channel.decisions = [SESSION]
    out = s.run("a = fs.read('/etc/hostname'); b = fs.read('/etc/hostname')")
    assert out.error is None and len(s.channel.requests) == 1
    assert [g.scope for g in s.security.grants] == ["session"]
    assert s.run("fs.read('/etc/hosts')").denied  # another file asks again


def test_deny_rule_beats_grants_and_never_asks(s: Session, tmp_path: Path) -> None:
    s.security.with_policy(s.security.policy.with_rules(Rule("fs.read:/etc/**", Effect.DENY)))
    out = s.run("fs.read('/etc/hostname')")
    assert out.denied and "denied by the policy" in str(out.error)
    assert s.channel.requests == []


def test_session_directory_and_audit_log_are_protected(s: Session) -> None:
    for code in [
        "fs.read('.cave/audit.jsonl')",
        "fs.write('.cave/audit.jsonl', 'x')",
        "fs.delete('.cave', recursive=True)",
        f"open({str(s.workspace / '.cave' / 'audit.jsonl')!r}, 'a')",
        f"import os; os.rename({str(s.log.path)!r}, 'elsewhere')",
    ]:
        out = s.run(code)
        assert out.denied and "belongs to Cave's session" in str(out.error), code
    assert s.channel.requests == [] and verify(s.log.path).ok


def test_fs_delete_file_and_tree(s: Session) -> None:
    (s.workspace / "tree" / "a" / "b").mkdir(parents=True)
    (s.workspace / "tree" / "a" / "b" / "f.txt").write_text("x")
    (s.workspace / "lone.txt").write_text("x")
    s.channel.decisions = [ONCE, ONCE]
    out = s.run("fs.delete('lone.txt'); fs.delete('tree', recursive=True)")
    assert out.error is None, out.trace
    assert not (s.workspace / "tree").exists() and not (s.workspace / "lone.txt").exists()
    assert [r.capability for r in s.channel.requests] == [
        f"fs.delete:{s.workspace / 'lone.txt'}",
        f"fs.delete:{s.workspace / 'tree'}",
    ]
    assert s.channel.requests[1].details["recursive"] is True


def test_recursive_delete_checks_every_path_before_deleting(s: Session) -> None:
    (s.workspace / "keep" / "inner").mkdir(parents=True)
    (s.workspace / "keep" / "inner" / "secret.txt").write_text("x")
    (s.workspace / "keep" / "other.txt").write_text("x")
    pol = s.security.policy.with_rules(Rule("fs.delete:keep/inner/secret.txt", Effect.DENY))
    s.security.with_policy(pol)
    s.channel.decisions = [ONCE]
    out = s.run("fs.delete('keep', recursive=True)")
    assert out.denied and "nothing under" in str(out.error)
    assert (s.workspace / "keep" / "other.txt").exists()


# -- shell ---------------------------------------------------------------------------------
def test_shell_run_asks_then_runs(s: Session) -> None:
    s.channel.decisions = [ONCE]
    out = s.run("r = shell.run(['echo', 'hi there'])")
    assert out.error is None, out.trace
    r = out.namespace["r"]
    assert r.returncode == 0 and r.stdout == "hi there\n" and r.args == ["echo", "hi there"]
    req = s.channel.requests[0]
    assert req.capability.startswith("shell:/") and req.capability.endswith("/echo")
    assert req.details["argv"] == ["echo", "hi there"] and req.details["cwd"] == str(s.workspace)
    assert len(s.channel.requests) == 1  # Popen + fork_exec did not ask again


def test_shell_run_refuses_a_command_string(s: Session) -> None:
    out = s.run("shell.run('rm -rf /')")
    assert isinstance(out.error, TypeError) and "as a list" in str(out.error)
    assert s.channel.requests == []


def test_shell_run_timeout_kills_the_process_group(s: Session) -> None:
    s.security.with_policy(s.security.policy.with_rules(Rule("shell:sh", Effect.ALLOW)))
    marker = s.workspace / "pid"
    code = "shell.run(['sh', '-c', 'sleep 30 & echo $! > pid; wait'], timeout=1.0)"
    start = time.monotonic()
    out = s.run(code)
    assert isinstance(out.error, TimeoutError) and "killed" in str(out.error)
    assert time.monotonic() - start < 15
    pid = int(marker.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild survived the timeout")


# -- net -----------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_port}/json")
            self.end_headers()
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_net_fetch_allowed_host(s: Session, server: http.server.HTTPServer) -> None:
    port = server.server_port
    s.security.with_policy(s.security.policy.with_rules(Rule(f"net:127.0.0.1:{port}", "allow")))
    out = s.run(
        f"r = fetch('http://127.0.0.1:{port}/json')", fetch=s.security.primitives["net"].fetch
    )
    assert out.error is None, out.trace
    r = out.namespace["r"]
    assert r.status == 200 and r.json() == {"ok": True} and r.ok
    assert s.channel.requests == []


def test_net_fetch_asks_and_redirect_to_another_host_is_checked(
    s: Session, server: http.server.HTTPServer
) -> None:
    port = server.server_port
    s.channel.decisions = [ONCE]  # for 127.0.0.1; the redirect to localhost is then denied
    out = s.run(f"r = net.fetch('http://127.0.0.1:{port}/redirect')")
    assert out.denied, out.trace
    assert s.channel.capabilities[0] == f"net:127.0.0.1:{port}"
    assert s.channel.capabilities[1] == f"net:localhost:{port}"


def test_net_fetch_only_http(s: Session) -> None:
    out = s.run("net.fetch('file:///etc/passwd')")
    assert isinstance(out.error, ValueError) and s.channel.requests == []


# -- env, human ----------------------------------------------------------------------------
def test_env_get_asks_and_records_no_value(s: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAVE_TEST_SECRET", "s3cret")
    s.channel.decisions = [ONCE]
    out = s.run("v = env.get('CAVE_TEST_SECRET'); w = None")
    assert out.namespace["v"] == "s3cret"
    assert s.run("env.get('CAVE_TEST_SECRET')").denied
    assert "s3cret" not in s.log.path.read_text()
    s.security.with_policy(s.security.policy.with_rules(Rule("env:NOPE_*", "allow")))
    out = s.run("v = env.get('NOPE_NOT_SET', 'fallback')")
    assert out.namespace["v"] == "fallback"


def test_human_ask_through_an_answer_channel(s: Session) -> None:
    s.channel.answers = ["blue"]
    out = s.run("color = human.ask('favourite colour?')")
    assert out.namespace["color"] == "blue"
    assert s.channel.requests[0].summary == "favourite colour?"
    assert s.run("human.ask('again?')").denied  # no answer


def test_human_ask_timeout_must_be_positive(s: Session) -> None:
    for bad in ("0", "-1", "float('nan')", "float('inf')"):
        out = s.run(f"human.ask('q?', timeout={bad})")
        assert isinstance(out.error, ValueError), bad
        assert "positive number of seconds" in str(out.error)
    assert not s.channel.requests  # nothing was asked


# -- privileges ----------------------------------------------------------------------------
def test_agent_code_cannot_change_policy_or_grants(s: Session) -> None:
    out = s.run("sec.with_policy(sec.policy.with_fallback('allow'))", sec=s.security)
    assert out.denied and "may not change the security session" in str(out.error)
    out = s.run("sec.restore({'grants': []})", sec=s.security)
    assert out.denied
    assert s.security.policy.fallback is Effect.ASK


def test_agent_code_can_read_its_policy_but_gets_a_copy(s: Session) -> None:
    out = s.run(
        "p = sec.policy\n"
        "object.__setattr__(p, 'fallback', 'allow')\n"
        "object.__setattr__(p.rules[0], 'effect', 'allow')\n",
        sec=s.security,
    )
    assert out.error is None
    assert s.run("fs.read('/etc/hostname')").denied


def test_grants_handed_out_are_copies(s: Session) -> None:
    s.channel.decisions = [SESSION]
    assert s.run("fs.read('/etc/hostname')").error is None
    out = s.run(
        "g = sec.grants[0]\n"
        "object.__setattr__(g, 'capability', 'fs.read:/**')\n"
        "object.__setattr__(g, 'scope', 'session')\n",
        sec=s.security,
    )
    assert out.error is None
    assert s.run("fs.read('/etc/hosts')").denied  # the session's own grant is unchanged
    assert [g.capability for g in s.security.grants] == ["fs.read:/etc/hostname"]


def test_agent_code_cannot_forge_audit_records(s: Session) -> None:
    out = s.run("log.record('approval', decision='approve_session')", log=s.log)
    assert out.denied and "may not write audit records" in str(out.error)


def test_policy_change_is_audited(s: Session) -> None:
    s.security.with_policy(s.security.policy.with_rules(Rule("net:example.com", "allow")), by="me")
    rec = [r for r in s.records() if r["kind"] == "policy.change"][-1]
    assert rec["added"] == ["allow net:example.com"] and rec["by"] == "me"


def test_snapshot_and_restore_round_trip(s: Session, tmp_path: Path) -> None:
    s.channel.decisions = [SESSION]
    s.run("fs.read('/etc/hostname')")
    snap = s.security.snapshot()
    import json

    json.dumps(snap)  # JSON-able
    other = make_session(tmp_path / "other")
    other.security.restore(snap)
    assert [g.capability for g in other.security.grants] == ["fs.read:/etc/hostname"]
    assert other.run("fs.read('/etc/hostname')").error is None
    assert other.channel.requests == []
    other.security.close()


def test_describe_primitives_lists_signatures(s: Session) -> None:
    text = s.security.describe_primitives()
    for needle in (
        "fs.read(path",
        "fs.write(path, data",
        "fs.list(path",
        "fs.delete(path",
        "shell.run(argv, cwd=None, timeout=60.0",
        "net.fetch(url",
        "env.get(name",
        "human.ask(question",
        "PermissionError",
    ):
        assert needle in text, needle


# -- channels ------------------------------------------------------------------------------
def test_channels_satisfy_the_protocol() -> None:
    assert isinstance(ConsoleChannel(io.StringIO(), io.StringIO()), ApprovalChannel)
    assert isinstance(AutoDenyChannel(), ApprovalChannel)
    assert isinstance(ScriptedChannel(), ApprovalChannel)


def _request() -> ApprovalRequest:
    return ApprovalRequest(
        "r1", "fs.write:/tmp/x", "write 3 bytes to /tmp/x", {"path": "/tmp/x", "argv": ["a", "b"]}
    )


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("o\n", Decision.APPROVE_ONCE),
        ("session\n", Decision.APPROVE_SESSION),
        ("d\n", Decision.DENY),
        ("what\nyes\n", Decision.APPROVE_ONCE),
        ("", Decision.DENY),
        ("x\ny\nz\n", Decision.APPROVE_ONCE),
        ("x\nx\nx\n", Decision.DENY),
    ],
)
def test_console_channel_answers(typed: str, expected: Decision) -> None:
    out = io.StringIO()
    chan = ConsoleChannel(io.StringIO(typed), out)
    assert chan.decide(_request(), threading.Event()) is expected
    text = out.getvalue()
    assert "fs.write:/tmp/x" in text and "write 3 bytes" in text and "argv: a b" in text


def test_console_channel_is_cancelled_promptly_while_waiting_on_a_pipe() -> None:
    r, w = os.pipe()
    with os.fdopen(r) as rf, os.fdopen(w, "w") as wf:
        chan = ConsoleChannel(rf, io.StringIO(), poll_interval=0.02)
        cancelled = threading.Event()
        threading.Timer(0.2, cancelled.set).start()
        start = time.monotonic()
        assert chan.decide(_request(), cancelled) is Decision.CANCELLED
        assert time.monotonic() - start < 2
        wf.write("s\n")
        wf.flush()
        assert chan.decide(_request(), threading.Event()) is Decision.APPROVE_SESSION
        wf.write("forty-two\n")
        wf.flush()
        assert chan.answer(_request(), threading.Event()) == "forty-two"


def test_cancel_pending_ends_a_wait_with_permission_error(tmp_path: Path) -> None:
    chan = BlockingChannel()
    s = make_session(tmp_path, chan)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(s.run("fs.read('/etc/hostname')")))
    t.start()
    assert chan.started.wait(10)
    assert s.security.cancel_pending() == 1
    t.join(10)
    out = result[0]
    assert out.denied and "cancelled" in str(out.error)  # type: ignore[attr-defined]
    assert chan.saw_cancel.is_set()
    s.security.close()


def test_a_keyboard_interrupt_while_waiting_cancels_the_request(tmp_path: Path) -> None:
    from cave.runtime._executor import _set_async_exc

    chan = BlockingChannel()
    s = make_session(tmp_path, chan)
    idents: list[int] = []
    result: list[object] = []

    def go() -> None:
        idents.append(threading.get_ident())
        result.append(s.run("fs.read('/etc/hostname')"))

    # run directly in this worker (not via s.run's own thread) so we know its ident
    def worker() -> None:
        idents.append(threading.get_ident())
        try:
            with s.security.agent_code():
                s.security.primitives["fs"].read("/etc/hostname")
        except BaseException as exc:  # noqa: B036
            result.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    assert chan.started.wait(10)
    _set_async_exc(idents[0], KeyboardInterrupt)
    t.join(10)
    assert isinstance(result[0], KeyboardInterrupt)
    assert chan.saw_cancel.wait(5)
    s.security.close()
    del go


def test_auto_deny_channel_with_a_real_log(tmp_path: Path) -> None:
    ws = Path(os.path.realpath(tmp_path))
    chan = AutoDenyChannel()
    with AuditLog(ws / "audit.jsonl") as log:
        sec = Security(workspace=ws, policy=Policy.default(ws), channel=chan, audit=log)
        try:
            with sec.agent_code():
                with pytest.raises(PermissionError, match="a person denied it"):
                    sec.primitives["shell"].run(["true"])
                with pytest.raises(PermissionError, match="nobody answered"):
                    sec.primitives["human"].ask("anyone?")
        finally:
            sec.close()
    assert [r.capability for r in chan.requests][0].startswith("shell:")
    assert verify(ws / "audit.jsonl").ok
