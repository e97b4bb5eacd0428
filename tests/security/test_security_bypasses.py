"""Known bypasses that the kernel red-team suite does not show (docs/security.md, table rows
marked "in-process test"). Each asserts the *documented* outcome, so that closing one later
makes its test fail on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from security_helpers import Session, make_session

from cave.security import verify


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = Path(os.path.realpath(tmp_path)) / "outside-secret.txt"
    path.write_text("TOPSECRET-42")
    return path


def test_metadata_through_stat_is_not_guarded(s: Session, secret: Path) -> None:
    out = s.run(
        f"import os\nst = os.stat({str(secret)!r})\nexists = os.path.exists({str(secret)!r})"
    )
    assert out.error is None and out.namespace["exists"] is True
    assert out.namespace["st"].st_size == len("TOPSECRET-42")  # size and times leak
    assert s.channel.requests == []


def test_a_hard_link_made_before_the_session_is_not_detected(s: Session, secret: Path) -> None:
    os.link(secret, s.workspace / "looks-local.txt")  # the user's doing, not the agent's
    out = s.run(f"data = open({str(s.workspace / 'looks-local.txt')!r}).read()")
    assert out.namespace.get("data") == "TOPSECRET-42" and s.channel.requests == []


def test_descriptors_the_process_holds_are_not_guarded_but_the_log_detects_it(
    s: Session,
) -> None:
    out = s.run(
        "import os, stat\n"
        "hit = None\n"
        "for fd in range(3, 1024):\n"
        "    try:\n"
        "        st = os.fstat(fd)\n"
        "    except OSError:\n"
        "        continue\n"
        "    if stat.S_ISREG(st.st_mode) and st.st_ino == target_ino:\n"
        "        os.write(fd, b'{\"forged\": true}\\n')\n"
        "        hit = fd\n"
        "        break\n",
        target_ino=os.stat(s.log.path).st_ino,
    )
    assert out.error is None and out.namespace["hit"] is not None  # not blocked
    s.log.record("after", note="the next honest record")
    report = verify(s.log.path)
    assert not report.ok and "no valid 'hash'" in (report.problem or "")  # but detected


def test_threading_settrace_runs_agent_code_in_threads_the_user_starts_later(
    tmp_path: Path,
) -> None:
    # In a fresh interpreter: trace functions hang in a process where anything ever called
    # PyThreadState_SetAsyncExc(id, NULL) (CPython 3.11 leaves its eval breaker signalled), as
    # the executor's timeout tests do earlier in this test run.
    script = textwrap.dedent(
        """
        import os, sys, threading
        sys.path.insert(0, sys.argv[1])
        from pathlib import Path
        from security_helpers import make_session
        s = make_session(Path(sys.argv[2]))
        out = s.run(
            "import threading\\n"
            "calls = []\\n"
            "def tracer(frame, event, arg):\\n"
            "    calls.append(threading.current_thread().name)\\n"
            "threading.settrace(tracer)\\n"
        )
        assert out.error is None, out.trace  # threading.settrace raises no audit event
        t = threading.Thread(target=lambda: None, name="a-user-thread")
        t.start()
        t.join()
        threading.settrace(None)
        print("a-user-thread" in out.namespace["calls"])
        """
    )
    helpers = str(Path(__file__).parent)
    result = subprocess.run(
        [sys.executable, "-c", script, helpers, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "True", result.stderr  # agent code ran, unguarded


def test_symlink_swap_between_check_and_open_is_not_blocked(s: Session, secret: Path) -> None:
    """The guard resolves the path, then CPython opens it: a swap in between wins. Here agent
    code swaps the link from a gc callback while the guard is checking (deterministically,
    by trying each allocation index in turn)."""
    benign = s.workspace / "benign.txt"
    benign.write_text("nothing")
    out = s.run(
        "import gc, os, threading\n"
        "me = threading.get_ident()\n"
        "won = None\n"
        "for k in range(1, 400):\n"
        "    link = os.path.join(ws, f'link-{k}')\n"
        "    tmp_link = os.path.join(ws, f'tmp-{k}')\n"
        "    os.symlink(benign, link)\n"
        "    os.symlink(secret, tmp_link)\n"
        "    state = {'n': 0}\n"
        "    def flip(phase, info, state=state, k=k, link=link, tmp_link=tmp_link):\n"
        "        if threading.get_ident() != me or phase != 'start':\n"
        "            return\n"
        "        state['n'] += 1\n"
        "        if state['n'] == k:\n"
        "            os.rename(tmp_link, link)  # atomic swap: allowed inside the workspace\n"
        "    old = gc.get_threshold()\n"
        "    gc.callbacks.append(flip)\n"
        "    gc.set_threshold(1)\n"
        "    try:\n"
        "        data = open(link).read()\n"
        "    except PermissionError:\n"
        "        data = None\n"
        "    finally:\n"
        "        gc.set_threshold(*old)\n"
        "        gc.callbacks.remove(flip)\n"
        "    if data == 'TOPSECRET-42':\n"
        "        won = k\n"
        "        break\n",
        ws=str(s.workspace),
        benign=str(benign),
        secret=str(secret),
    )
    assert out.error is None, out.trace
    assert out.namespace["won"] is not None, "the race was not won: update docs/security.md"


def test_os_environ_reads_are_guarded(s: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Formerly a known bypass; every route is in test_security_environ."""
    monkeypatch.setenv("CAVE_BYPASS_SECRET", "ENVSECRET")
    out = s.run("import os\nv = os.environ['CAVE_BYPASS_SECRET']")
    assert out.denied and "v" not in out.namespace
    assert s.channel.capabilities == ["env:CAVE_BYPASS_SECRET"]
    assert s.run("v = env.get('CAVE_BYPASS_SECRET')").denied  # the primitive asks too


def test_thread_bootstrap_frame_holds_nothing_useful(s: Session) -> None:
    """A thread agent code starts can see its own first frame (Cave's bootstrap): it holds a
    used-up ticket and the target, nothing that could unmark the thread."""
    out = s.run(
        "import sys, threading\nseen = []\n"
        "def child():\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        seen.append(sorted(f.f_locals))\n"
        "        f = f.f_back\n"
        "t = threading.Thread(target=child)\nt.start(); t.join()\n"
    )
    assert out.error is None
    flat = {name for names in out.namespace["seen"] for name in names}
    assert "function" in flat  # Cave's _child_bootstrap frame is there...
    assert not flat & {"ticket", "_handle", "vault", "binding", "session"}  # ...holding nothing


def test_a_channels_internal_state_is_reachable(tmp_path: Path, secret: Path) -> None:
    """The approval channel is the integrator's object and agent code can reach it; the
    session holds its bound ``decide``, but what ``decide`` reads can be changed."""
    import io

    from cave.approvals._console import ConsoleChannel

    console = ConsoleChannel(io.StringIO(""), io.StringIO())  # EOF: would deny
    s = make_session(tmp_path, console)
    try:
        out = s.run(
            f"chan.input = io.StringIO('s\\n')\ndata = open({str(secret)!r}).read()",
            chan=console,
            io=io,
        )
        assert out.namespace.get("data") == "TOPSECRET-42"  # approved "for the session"
    finally:
        s.security.close()
        s.log.close()


def test_swapping_the_audit_logs_descriptors_silences_it(s: Session) -> None:
    s.log.record("start", note="a record before the agent runs")
    out = s.run(
        "import os\n"
        "null = os.open('/dev/null', os.O_WRONLY)\n"
        "log._fd = null\n"
        "log._head_fd = os.open('/dev/null', os.O_RDWR)\n",
        log=s.log,
    )
    assert out.error is None, out.trace
    before = s.log.path.read_bytes()
    s.run("fs.read('/etc/hostname')")  # asked and denied: the records go to /dev/null
    assert s.log.path.read_bytes() == before
    assert verify(s.log.path).ok  # and the file still verifies: nothing shows the gap
