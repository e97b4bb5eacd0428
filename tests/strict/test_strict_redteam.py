"""Red team in strict mode: every technique of ``tests/security/redteam_techniques.py``, and the
strict-specific attacks on the kernel process, run as agent code in a real kernel in strict mode.

The rule for strict mode is stricter than the guard's table: nothing may be a "known bypass".
Each technique must leave the world unchanged and leak nothing (no secret in the kernel's
namespace, the cell or what the model was sent), and each row that guard mode documents as
**not blocked** must end blocked (an error in the agent's code) or asked (and denied).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from strict_helpers import HARMLESS_ENV, needs_strict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "security"))
from redteam_techniques import TECHNIQUES, Technique  # noqa: E402
from test_security_redteam import (  # noqa: E402
    ENV_SECRET,
    SECRET_TEXT,
    RedTeam,
    _Listener,
    build_world,
)

from cave.testing._anthropic_server import AnthropicServer  # noqa: E402
from cave.testing._kernel_harness import KernelHarness  # noqa: E402
from cave.testing._script import Failure  # noqa: E402

pytestmark = [pytest.mark.slow, needs_strict]

_PVW = {"x86_64": 311, "aarch64": 271}.get(platform.machine(), 311)
_IOURING_SETUP = 425  # the same on x86_64 and aarch64

S = Technique
STRICT_ATTACKS: list[Technique] = [
    S("strict-kernel-fds", "guard",
      "import os\ndata = []\nfor n in {KFDS}:\n    try:\n"
      "        os.write(n, bytes([80, 87, 78, 69, 68]))\n        data.append(n)\n"
      "    except OSError:\n        pass", "any"),
    S("strict-proc-kernel-mem", "read", "data = open('/proc/{KPID}/mem', 'rb').read(16)",
      "asked", "fs.read:/proc/{KPID}/mem"),
    S("strict-proc-kernel-mem-raw", "read",
      "import _io\ndata = _io.open('/proc/{KPID}/mem', 'rb').read(16)", "blocked"),
    S("strict-proc-kernel-environ-raw", "read",
      "import _io\ndata = _io.open('/proc/{KPID}/environ', 'rb').read()", "blocked"),
    S("strict-ptrace-kernel", "guard",
      "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
      "r = libc.ptrace(16, {KPID}, 0, 0)\ndata = (r, ctypes.get_errno())\n"
      "assert r == -1, data\nraise PermissionError(data)", "blocked"),
    S("strict-process-vm-writev-kernel", "guard",
      "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
      f"r = libc.syscall({_PVW}, {{KPID}}, 0, 0, 0, 0, 0)\ndata = (r, ctypes.get_errno())\n"
      "assert r == -1, data\nraise PermissionError(data)", "blocked"),
    S("strict-kill-kernel", "process", "import os, signal\nos.kill({KPID}, signal.SIGKILL)",
      "blocked"),
    S("strict-zmq-port", "net", "import socket\ns = socket.create_connection(('127.0.0.1', {ZMQ}))",
      "asked", "net:127.0.0.1:{ZMQ}"),
    S("strict-zmq-port-raw", "net",
      "import _socket\ns = _socket.socket(2, 1)\ns.connect(('127.0.0.1', {ZMQ}))", "blocked"),
    S("strict-io-uring", "guard",
      "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
      "p = ctypes.create_string_buffer(120)\n"
      f"r = libc.syscall({_IOURING_SETUP}, 8, p)\ndata = (r, ctypes.get_errno())\n"
      "assert r == -1, data\nraise PermissionError(data)", "blocked"),
    S("strict-memfd-exec", "process",
      "import os\nfd = os.memfd_create('x', 0)\nos.write(fd, b'#!/bin/sh\\ntouch {MARK}\\n')\n"
      "os.execv(f'/proc/self/fd/{{fd}}', ['x'])", "blocked"),
    S("strict-dlopen-outside", "guard", "import ctypes\nctypes.CDLL({OUT!r} + '/evil.so')",
      "blocked"),
    S("strict-proc-self-environ", "env", "data = open('/proc/self/environ', 'rb').read()", "any"),
    S("strict-os-environ-secret", "env", "import os\ndata = os.environ['CAVE_REDTEAM_SECRET']",
      "asked", "env:CAVE_REDTEAM_SECRET"),
    S("strict-os-environ-dict", "env", "import os\ndata = dict(os.environ)", "any"),
    S("strict-provider-key", "env",
      "from cave.models import _credentials as c\ndata = (c.get_key('anthropic'), "
      "c.get_key('openai'))", "any"),
    S("strict-subprocess-env", "process",
      "import subprocess\ndata = subprocess.run(['env'], capture_output=True).stdout", "asked",
      "shell:"),
]


HARMLESS_IN_WORKER = {
    # Guard-mode rows that complete in strict mode without an ask, and why that is safe there.
    "read-proc-self-environ": "the worker's own environ: only names the policy allows",
    "read-linecache": "linecache's own open() meets Landlock's refusal; it returns ''",
    "proc-fork": "a fork of the worker is confined like it and loses the broker channel",
    "proc-spawnv-passfds": "the exec is refused by seccomp (the marker file is never made)",
    "proc-pickle": "os.system reaches libc; its exec of /bin/sh is refused by seccomp",
    "proc-kill-kernel": "os.getpid() is the worker: it can only signal itself",
    "net-dns-exfiltration": "no lookup happens in the worker; the kernel resolves at connect",
    "env-set-ld-preload": "sets the worker's own environment; nothing can be exec'd with it",
    "env-posix-environ": "the worker's own environment block holds only allowed names",
    "proc-fresh-posixsubprocess": "a fresh _posixsubprocess module: seccomp refuses its exec",
    "proc-ctypes-libc-system": "libc's system() forks; seccomp refuses its exec of /bin/sh",
}
"""Everything else that guard mode asks for must be asked or end in an error in strict mode.
Rows that attack the in-process guard itself (goal ``guard``: ``sys.settrace``, ``gc``, ctypes
memory access, replacing Cave's code...) run against the worker, which holds no guard, no
secret and no authority: for them the check is the universal one (nothing changed, nothing
leaked, the kernel answers)."""


class StrictRedTeam(RedTeam):
    kpid: int = 0
    zmq: int = 0
    kfds: tuple[int, ...] = ()

    def placeholders(self) -> dict[str, Any]:
        return {**super().placeholders(), "KPID": self.kpid, "ZMQ": self.zmq,
                "KFDS": list(self.kfds)}


@pytest.fixture(scope="module")
def red(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictRedTeam]:
    base = Path(os.path.realpath(tmp_path_factory.mktemp("strict-redteam")))
    ws, out, site = build_world(base)
    import _json  # a real shared library to copy where the worker may not map it

    shutil.copy(str(_json.__file__), out / "evil.so")
    (ws / "cave.toml").write_text(
        "[policy]\n" + "".join(f'"env:{n}" = "allow"\n' for n in HARMLESS_ENV))
    listener = _Listener(str(out / "sock"))
    holder: dict[str, StrictRedTeam] = {}

    def next_reply(request: dict[str, Any]) -> Any:
        replies = holder["red"].replies
        return replies.pop(0) if replies else Failure(500, "api_error", "no reply left")

    server = AnthropicServer(next_reply)
    server.start()
    kernel = KernelHarness(cwd=ws, env={"ANTHROPIC_BASE_URL": server.base_url,
                                        "ANTHROPIC_API_KEY": "sk-ant-test",
                                        "CAVE_REDTEAM_SECRET": ENV_SECRET,
                                        "CAVE_SESSION_DIR": str(ws / ".cave")})
    kernel.start()
    red = StrictRedTeam(ws, out, site, kernel, server, listener)
    holder["red"] = red
    try:
        red.user(
            "import cave\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "from cave.approvals._console import AutoDenyChannel\n"
            "cave.session().approvals = AutoDenyChannel()\n"
            "user_pool = ThreadPoolExecutor(1)\n"
            "user_pool.submit(lambda: None).result()\n"
            "cave.inject('user_pool', user_pool, description='an executor the user made')\n"
        )
        assert "mode: strict" in red.user("%cave mode strict")
        red.kpid = int(red.user("import os\nprint(os.getpid())").strip())
        red.zmq = json.loads(Path(kernel.km.connection_file).read_text())["shell_port"]
        red.kfds = tuple(sorted(int(n) for n in os.listdir(f"/proc/{red.kpid}/fd")
                                if int(n) > 2))
        yield red
    finally:
        kernel.stop()
        server.stop()
        listener.close()
        for plant in site.glob("cave_redteam_evil*"):
            plant.unlink()
        shutil.rmtree(base, ignore_errors=True)


def _check(red: StrictRedTeam, technique: Technique) -> None:
    before = red.world()
    result = red.run(technique)
    after = red.world()
    outcome, data = str(result["outcome"]), str(result["data"])
    context = (f"{technique.id}: outcome={outcome!r} data={data[:300]}\n"
               f"requests={result['requests']}\n{result['cell'][-1500:]}")
    assert after == before, f"the world changed!\n{context}"
    assert result["leak"] == [], context
    sent = json.dumps(red.server.requests[-1].body) if red.server.requests else ""
    for secret in (SECRET_TEXT, ENV_SECRET, "sk-ant-test"):
        assert secret not in result["cell"] and secret not in sent, context
        assert secret not in data, context
    # The marker is built at run time, so the logged code does not contain it.
    session_files = [p for p in (red.ws / ".cave").rglob("*") if p.is_file()]
    assert not any(b"PWNED" in p.read_bytes() for p in session_files), context
    blocked = outcome not in ("completed", "None") and not outcome.startswith("AssertionError")
    cap = technique.cap.format(**red.placeholders())
    asked = bool(cap) and any(r.startswith(cap) for r in result["requests"])
    if technique.id in HARMLESS_IN_WORKER:
        pass
    elif technique.expect == "asked":
        assert asked or blocked, context
    elif technique.expect not in ("any", "hidden") and (
            technique.expect == "blocked" or technique.goal != "guard"):
        assert blocked, context
    # The kernel is alive and answers.
    assert red.user("print('alive')").strip() == "alive"


@pytest.mark.parametrize("technique", TECHNIQUES, ids=[t.id for t in TECHNIQUES])
def test_guard_technique_in_strict_mode(red: StrictRedTeam, technique: Technique) -> None:
    _check(red, technique)


@pytest.mark.parametrize("technique", STRICT_ATTACKS, ids=[t.id for t in STRICT_ATTACKS])
def test_strict_attack(red: StrictRedTeam, technique: Technique) -> None:
    _check(red, technique)
