"""Whether the kernel that asked still runs: a live pid is not enough; another host is unknown."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from cave.approvals._owner import Owner


def test_owner_liveness_rejects_reused_pid_and_other_hosts() -> None:
    me = Owner.this_process()
    assert me.alive() is True
    assert Owner(me.host, me.pid, "1").alive() is False  # same pid, other start time
    assert Owner("elsewhere.example", me.pid, me.started).alive() is None
    assert Owner.parse(str(me)) == me


def test_a_killed_child_not_yet_reaped_counts_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = Owner(Owner.this_process().host, child.pid, _started(child.pid))
        assert owner.started and owner.alive() is True
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child.pid) == "Z"  # the pid still exists: only the start time tells
        assert owner.alive() is False
    finally:
        child.kill()
        child.wait()


def test_an_owner_text_without_a_pid_is_dead_here_and_unknown_elsewhere() -> None:
    here = Owner.this_process().host
    assert Owner.parse(f"{here}@kernel:").pid == -1
    assert Owner.parse(f"{here}@kernel:").alive() is False
    assert Owner.parse("not-an-owner").alive() is None  # no host: cannot tell


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()


def _state(pid: int) -> str:
    return _stat_fields(pid)[0]


def _started(pid: int) -> str:
    return _stat_fields(pid)[19]
