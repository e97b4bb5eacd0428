"""Step timeouts and interrupts still work with the guard on, and leave the interpreter clean."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Fresh interpreter: an earlier timeout in this process must not hide the bug."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from cave.approvals._console import AutoDenyChannel
        from cave.runtime import AgentRuntime
        from cave.security import AuditLog, Policy, Security

        ws = Path({str(tmp_path)!r})
        runtime = AgentRuntime()
        security = Security(workspace=ws, policy=Policy.default(ws), channel=AutoDenyChannel(),
                            audit=AuditLog(ws / ".cave" / "audit.jsonl"), exec_marker="<cave-")
        """
    ) + textwrap.dedent(body)
    (tmp_path / ".cave").mkdir()
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)


def test_a_step_timeout_fires_while_the_guard_is_on(tmp_path: Path) -> None:
    out = _run(tmp_path, """
        with security.agent_code():
            result = runtime.run("while True:\\n    pass", timeout=0.5, echo=False)
        print("timed_out", result.timed_out)
    """)
    assert out.returncode == 0, out.stderr
    assert "timed_out True" in out.stdout


def test_tracing_threads_still_run_after_a_timeout(tmp_path: Path) -> None:
    """After a stop was cleared, a thread with a trace function (pdb, coverage) must not spin."""
    out = _run(tmp_path, """
        import sys, threading
        with security.agent_code():
            runtime.run("while True:\\n    pass", timeout=0.3, echo=False)
        calls = []
        def tracer(frame, event, arg):
            calls.append(event)
            return None
        threading.settrace(tracer)
        t = threading.Thread(target=lambda: sum(range(10)))
        t.start()
        t.join(10)
        threading.settrace(None)
        print("alive", t.is_alive(), "traced", bool(calls))
    """)
    assert out.returncode == 0, out.stderr
    assert "alive False traced True" in out.stdout
