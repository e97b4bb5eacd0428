"""Secrets through a real Cave kernel: environment reads ask, the provider key is out of reach.

One kernel for the module, started with an Anthropic key and two environment secrets, pointed at
the loopback Anthropic server. Agent steps try to read them; user cells (which the guard does
not check, so they are the strongest probe) look for the key everywhere in the kernel process.
"""

from __future__ import annotations

import json
import os
import select
import shutil
from collections.abc import Iterator

import pytest

from cave.testing import ScriptedKernel
from cave.testing._script import reply

KEY = "sk-ant-kernel-secret-3d5f7a91c2"
ENV_SECRET = "envsecret-kernel-61b"
ENV_BIN = shutil.which("env") or "/usr/bin/env"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def k() -> Iterator[ScriptedKernel]:
    kernel = ScriptedKernel(
        env={"ANTHROPIC_API_KEY": KEY, "CAVE_KT_SECRET": ENV_SECRET, "GITHUB_TOKEN": ENV_SECRET}
    )
    kernel.start()
    try:
        _user(  # nobody watches: every ask is denied at once (and recorded)
            kernel,
            "import cave\nfrom cave.approvals._console import AutoDenyChannel\n"
            "cave.session().approvals = AutoDenyChannel()\n",
        )
        yield kernel
    finally:
        kernel.stop()


def _agent(k: ScriptedKernel, code: str) -> dict[str, object]:
    """Run ``code`` as one agent step; return the step's ``result`` and the cell's text."""
    wrapped = "result = {}\n" + code
    k.script(reply("", wrapped), reply("done"))
    cell = k.execute("%agent go", timeout=120)
    probe = k.execute(
        "import json as _j, cave as _c\n"
        "print(_j.dumps(_c.session().runtime.namespace.get('result'), default=repr))",
        timeout=60,
    )
    assert probe.status == "ok", probe.all_text
    return {"result": json.loads(probe.stdout.strip().splitlines()[-1]), "cell": cell.all_text}


def _user(k: ScriptedKernel, code: str) -> str:
    cell = k.execute(code, timeout=120)
    assert cell.status == "ok", cell.all_text
    return str(cell.stdout)


def test_model_calls_go_through_with_the_key_the_kernel_started_with(k: ScriptedKernel) -> None:
    out = _agent(k, "result['x'] = 1")
    assert out["result"] == {"x": 1}
    assert k.requests and all(r.headers.get("x-api-key") == KEY for r in k.requests)


AGENT_TRIES = r"""
import os, gc, sys
def attempt(name, fn):
    try:
        result[name] = repr(fn())
    except BaseException as exc:
        result[name] = 'refused: ' + type(exc).__name__
from cave.models import _credentials as c
attempt('get_key', lambda: c.get_key('anthropic'))
attempt('keys', lambda: dict(c._keys))
attempt('proxy', lambda: vars(c._proxy[0]))
attempt('environ', lambda: os.environ.get('ANTHROPIC_API_KEY'))
attempt('proc_environ', lambda: open('/proc/self/environ', 'rb').read())
attempt('gc', lambda: [o for o in gc.get_objects() if isinstance(o, dict)][:5])
import cave
attempt('client', lambda: vars(cave.session().model._client))
attempt('model', lambda: vars(cave.session().model))
"""


def test_agent_code_cannot_read_the_key(k: ScriptedKernel) -> None:
    out = _agent(k, AGENT_TRIES)
    result = out["result"]
    assert isinstance(result, dict) and set(result) >= {"get_key", "proxy", "client"}
    assert result["get_key"] == "None" and result["keys"] == "{}"
    assert result["gc"].startswith("refused") and result["proc_environ"].startswith("refused")
    assert KEY not in json.dumps(result) and KEY not in str(out["cell"])
    assert all(r.headers.get("x-api-key") == KEY for r in k.requests)  # and calls still work


USER_SCAN = r"""
def _scan(needle_hex):
    import gc, os
    key = bytes.fromhex(needle_hex).decode()  # only in this frame, which gc does not list
    hits = []
    hits += ['environ'] if key in repr(dict(os.environ)) else []
    hits += ['proc_environ'] if key.encode() in open('/proc/self/environ', 'rb').read() else []
    for o in gc.get_objects():
        try:
            text = repr(o) if isinstance(o, (dict, list, tuple, set)) else ''
        except Exception:
            continue
        if key in text:
            hits.append('gc:' + type(o).__name__ + ':' + repr(list(o)[:8]))
            break
    return hits
print('HITS', _scan(%r))
del _scan
"""


def test_the_key_is_nowhere_a_user_cell_can_look(k: ScriptedKernel) -> None:
    """User cells are not guarded: environment, initial environment block, every container."""
    out = _user(k, USER_SCAN % KEY.encode().hex())
    assert "HITS []" in out, out


MEMORY_SCAN = r"""
def _memscan(head_hex, tail_hex):
    # The key in two halves that are never joined, so this scan itself makes no copy of it.
    head, tail = bytes.fromhex(head_hex), bytes.fromhex(tail_hex)
    copies = 0
    with open('/proc/self/maps') as f:
        regions = [line.split()[:2] for line in f]
    with open('/proc/self/mem', 'rb', 0) as mem:
        for addr, perms in regions:
            if not perms.startswith('rw'):
                continue
            lo, hi = (int(x, 16) for x in addr.split('-'))
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except (OSError, OverflowError, ValueError):
                continue
            i = data.find(head)
            while i != -1:
                if data[i + len(head) : i + len(head) + len(tail)] == tail:
                    copies += 1
                i = data.find(head, i + 1)
    return copies
print('COPIES', _memscan(%r, %r))
del _memscan
"""


def test_no_copy_of_the_key_is_left_in_the_kernels_memory(k: ScriptedKernel) -> None:
    """Every writable mapping of the kernel, read from a user cell (what ``ctypes`` could read):
    the key's bytes appear nowhere."""
    raw = KEY.encode()
    out = _user(k, MEMORY_SCAN % (raw[:12].hex(), raw[12:].hex()))
    assert "COPIES 0" in out, out


def test_the_memory_scan_finds_a_key_that_is_there(k: ScriptedKernel) -> None:
    """The scan above can fail: a copy the user cell makes on purpose is found."""
    raw = b"sk-ant-planted-copy-7e1d09"
    out = _user(
        k,
        f"_planted = bytes.fromhex({raw.hex()!r})\n"
        + MEMORY_SCAN % (raw[:12].hex(), raw[12:].hex())
        + "del _planted\n",
    )
    assert int(out.split("COPIES", 1)[1].split()[0]) >= 1, out  # (the scan's buffers may add)


def test_the_credential_process_is_owned_and_keyless(k: ScriptedKernel) -> None:
    out = _user(
        k,
        "import os\nfrom cave.models._credentials import credential_process_pid\n"
        "pid = credential_process_pid()\nprint('PID', pid, os.getpgid(pid), os.getpid())",
    )
    pid, pgid, kernel_pid = (int(x) for x in out.split("PID", 1)[1].split()[:3])
    assert pgid == pid and pid != kernel_pid
    environ = open(f"/proc/{pid}/environ", "rb").read()
    assert KEY.encode() not in environ and ENV_SECRET.encode() not in environ
    with open(f"/proc/{pid}/status") as f:
        assert f"PPid:\t{kernel_pid}" in f.read()


ENV_TRIES = r"""
import os, subprocess
def attempt(name, fn):
    try:
        result[name] = repr(fn())
    except BaseException as exc:
        result[name] = 'refused: ' + type(exc).__name__
attempt('getitem', lambda: os.environ['CAVE_KT_SECRET'])
attempt('getenv', lambda: os.getenv('GITHUB_TOKEN'))
attempt('dict', lambda: dict(os.environ))
attempt('child', lambda: subprocess.run([%r], capture_output=True, text=True).stdout)
attempt('path', lambda: os.environ['PATH'])
"""


def test_environment_secrets_ask_in_agent_code_and_not_in_user_cells(k: ScriptedKernel) -> None:
    _user(k, f"%cave policy allow shell:{ENV_BIN}")
    out = _agent(k, ENV_TRIES % ENV_BIN)
    result = out["result"]
    assert isinstance(result, dict)
    assert result["getitem"].startswith("refused: PermissionError"), result
    assert result["getenv"].startswith("refused: PermissionError"), result
    assert "PATH=" in result["child"] and "/" in result["path"]
    assert ENV_SECRET not in json.dumps(result) and ENV_SECRET not in str(out["cell"])
    assert "CAVE_KT_SECRET" not in result["dict"] and "GITHUB_TOKEN" not in result["child"]
    assert ENV_SECRET in _user(k, "import os\nprint(os.environ['CAVE_KT_SECRET'])")
    records = _user(
        k,
        "import cave, json\n"
        "for line in cave.session().audit.path.read_text().splitlines()[-40:]:\n"
        "    r = json.loads(line)\n"
        "    if r.get('capability') == 'env:CAVE_KT_SECRET': print('REC', r['kind'])\n",
    )
    assert "REC approval" in records or "REC primitive" in records, records


def test_a_policy_rule_lets_the_agent_read_a_name(k: ScriptedKernel) -> None:
    _user(k, "%cave policy allow env:CAVE_KT_SECRET")
    out = _agent(k, "import os\nresult['v'] = os.environ['CAVE_KT_SECRET']")
    assert out["result"] == {"v": ENV_SECRET}


def test_a_typed_key_goes_to_the_credential_process_too(k: ScriptedKernel) -> None:
    """``%cave key`` (getpass over stdin): later model calls carry the typed key, and the
    kernel's containers do not hold it. Last of the module's tests: it replaces the key."""
    typed = "sk-ant-typed-key-0c4e2f"
    cell = k.execute("%cave key", timeout=60, stdin=lambda _msg: typed)
    assert cell.status == "ok" and "Key set" in cell.stdout, cell.all_text
    out = _agent(k, "result['y'] = 2")
    assert out["result"] == {"y": 2}
    assert k.requests and all(r.headers.get("x-api-key") == typed for r in k.requests)
    assert "HITS []" in _user(k, USER_SCAN % typed.encode().hex())


def test_the_credential_process_ends_with_its_kernel() -> None:
    with ScriptedKernel(env={"ANTHROPIC_API_KEY": KEY}) as kernel:
        out = _user(
            kernel,
            "from cave.models._credentials import credential_process_pid\n"
            "print('PID', credential_process_pid())",
        )
        pid = int(out.split("PID", 1)[1].split()[0])
        pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], 60)  # readable once the process has ended
        assert ready, f"credential process {pid} outlived its kernel"
    finally:
        os.close(pidfd)
