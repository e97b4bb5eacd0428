"""Environment variables while agent code runs: every route to a secret asks (``env:NAME``).

In-process (``Security`` + agent code on a worker thread, as the kernel runs it); the same rule
through a real kernel is in ``redteam_techniques`` (the ``env-*`` rows).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from security_helpers import ScriptedChannel, Session, make_session

from cave.approvals._protocol import Decision
from cave.security import Policy

SECRET_NAME = "CAVE_ENV_TEST_SECRET"
SECRET = "env-secret-9f3c"
ENV = shutil.which("env") or "/usr/bin/env"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_NAME, SECRET)  # a user-side write: not checked


def _session(
    tmp_path: Path, *decisions: Decision, rules: tuple[tuple[str, str], ...] = ()
) -> Session:
    ws = Path(os.path.realpath(tmp_path)) / "ws"
    policy = Policy.default(ws).with_rules(
        ("shell:" + os.path.realpath(ENV), "allow"), (f"shell:{ENV}", "allow"),
        ("shell:/bin/sh", "allow"), *rules,
    )  # fmt: skip
    return make_session(tmp_path, ScriptedChannel(*decisions), policy)


@pytest.fixture
def s2(tmp_path: Path) -> Iterator[Session]:
    session = _session(tmp_path)
    yield session
    session.security.close()
    session.log.close()


READS = {
    "getitem": f"data = os.environ[{SECRET_NAME!r}]",
    "get": f"data = os.environ.get({SECRET_NAME!r})",
    "contains": f"data = {SECRET_NAME!r} in os.environ",
    "getenv": f"data = os.getenv({SECRET_NAME!r})",
    "environb": f"data = os.environb[{SECRET_NAME.encode()!r}]",
    "getenvb": f"data = os.getenvb({SECRET_NAME.encode()!r})",
    "pop": f"data = os.environ.pop({SECRET_NAME!r})",
    "setdefault": f"data = os.environ.setdefault({SECRET_NAME!r}, 'x')",
    "posix-environ": f"import posix\ndata = posix.environ[{SECRET_NAME.encode()!r}]",
}


@pytest.mark.parametrize("route", sorted(READS))
def test_each_read_route_asks_and_a_denial_leaks_nothing(s2: Session, route: str) -> None:
    out = s2.run("import os\n" + READS[route])
    assert out.denied, (route, out.error, out.namespace.get("data"))
    assert s2.channel.capabilities == [f"env:{SECRET_NAME}"]
    assert SECRET not in repr(out.namespace.get("data"))
    assert os.environ[SECRET_NAME] == SECRET  # nothing was removed (pop was refused)
    approvals = [r for r in s2.records() if r["kind"] == "approval"]
    assert approvals and approvals[-1]["capability"] == f"env:{SECRET_NAME}"


LISTINGS = {
    "keys": "data = list(os.environ)",
    "dict": "data = dict(os.environ)",
    "copy": "data = os.environ.copy()",
    "items": "data = list(os.environ.items())",
    "values": "data = list(os.environ.values())",
    "repr": "data = repr(os.environ)",
    "str-format": "data = f'{os.environ}'",
    "or": "data = os.environ | {}",
    "environb": "data = dict(os.environb)",
}


@pytest.mark.parametrize("route", sorted(LISTINGS))
def test_listing_shows_only_allowed_names_and_never_asks(s2: Session, route: str) -> None:
    out = s2.run("import os\n" + LISTINGS[route])
    assert out.error is None, out.trace
    text = repr(out.namespace["data"])
    assert SECRET_NAME not in text and SECRET not in text
    assert "PATH" in text or "/bin" in text  # an allowed name (or its value) is there
    assert s2.channel.requests == []


def test_len_counts_what_iteration_shows(s2: Session) -> None:
    out = s2.run("import os\nn, k = len(os.environ), len(list(os.environ))")
    assert out.error is None and out.namespace["n"] == out.namespace["k"]
    assert out.namespace["n"] < len(os.environ)  # the user sees more, the secret included


def test_an_unset_name_reads_as_unset_without_asking(s2: Session) -> None:
    out = s2.run(
        "import os\na = os.environ.get('CAVE_NOT_SET_XYZ')\nb = 'CAVE_NOT_SET_XYZ' in os.environ\n"
        "c = env.get('CAVE_NOT_SET_XYZ')\n"
        "try:\n    os.environ['CAVE_NOT_SET_XYZ']\nexcept KeyError:\n    d = 'KeyError'\n"
    )
    assert out.error is None, out.trace
    assert (out.namespace["a"], out.namespace["b"], out.namespace["c"]) == (None, False, None)
    assert out.namespace["d"] == "KeyError" and s2.channel.requests == []


def test_the_raw_dictionary_is_out_of_reach(s2: Session) -> None:
    out = s2.run("import os\ndata = os.environ._data")
    assert out.denied and "raw dictionary" in str(out.error)
    out = s2.run("import os\ndata = sorted(vars(os.environ))")
    assert out.error is None and "_data" not in out.namespace["data"]
    assert isinstance(os.environ._data, dict)  # type: ignore[attr-defined]  # the user's thread


def test_user_threads_see_the_real_environment(s2: Session) -> None:
    assert os.environ[SECRET_NAME] == SECRET and SECRET_NAME in dict(os.environ)
    assert os.getenv(SECRET_NAME) == SECRET and SECRET in repr(os.environ)
    os.environ["CAVE_ENV_TEST_USER"] = "u"  # writes from the user are not checked
    try:
        assert os.environ.pop("CAVE_ENV_TEST_USER") == "u"
    finally:
        os.environ.pop("CAVE_ENV_TEST_USER", None)
    assert s2.channel.requests == []


def test_approve_once_reads_once_and_is_audited(tmp_path: Path) -> None:
    s = _session(tmp_path, Decision.APPROVE_ONCE)
    out = s.run(f"import os\ndata = os.environ[{SECRET_NAME!r}]\nlisted = list(os.environ)")
    assert out.error is None and out.namespace["data"] == SECRET
    assert SECRET_NAME not in out.namespace["listed"]  # a once grant does not list it
    again = s.run(f"import os\ndata = os.environ[{SECRET_NAME!r}]")
    assert again.denied and len(s.channel.requests) == 2
    records = s.records()
    used = [r for r in records if r["kind"] == "primitive" and r.get("op") == "env.get"]
    assert used and used[0]["capability"] == f"env:{SECRET_NAME}" and used[0]["ok"]
    s.security.close()


def test_a_session_grant_lists_the_name_and_children_inherit_it(tmp_path: Path) -> None:
    s = _session(tmp_path, Decision.APPROVE_SESSION)
    out = s.run(
        f"import os, subprocess\ndata = os.environ[{SECRET_NAME!r}]\nlisted = list(os.environ)\n"
        f"child = subprocess.run([{ENV!r}], capture_output=True, text=True).stdout"
    )
    assert out.error is None, out.trace
    assert SECRET_NAME in out.namespace["listed"]
    assert f"{SECRET_NAME}={SECRET}" in out.namespace["child"]
    assert len(s.channel.requests) == 1
    s.security.close()


def test_a_policy_allow_rule_makes_a_name_free(tmp_path: Path) -> None:
    s = _session(tmp_path, rules=((f"env:{SECRET_NAME}", "allow"),))
    out = s.run(f"import os\ndata = os.environ[{SECRET_NAME!r}]\nlisted = dict(os.environ)")
    assert out.error is None and out.namespace["data"] == SECRET
    assert out.namespace["listed"][SECRET_NAME] == SECRET and s.channel.requests == []
    s.security.close()
    summary = [r for r in s.records() if r["kind"] == "guard.summary"]
    assert summary and summary[-1]["allowed"].get("os.environ", 0) >= 2


CHILDREN = {
    "subprocess": f"data = subprocess.run([{ENV!r}], capture_output=True, text=True).stdout",
    "check_output": f"data = subprocess.check_output([{ENV!r}], text=True)",
    "env-copy": (
        f"data = subprocess.run([{ENV!r}], env=os.environ.copy(), capture_output=True, "
        "text=True).stdout"
    ),
    "env-mapping": (
        f"data = subprocess.run([{ENV!r}], env=os.environ, capture_output=True, text=True).stdout"
    ),
    "posix_spawn": (
        "import tempfile\nr, w = os.pipe()\n"
        f"pid = os.posix_spawn({ENV!r}, ['env'], os.environ, file_actions=["
        "(os.POSIX_SPAWN_DUP2, w, 1)])\nos.close(w)\nos.waitpid(pid, 0)\n"
        "data = os.read(r, 1 << 20).decode()\nos.close(r)"
    ),
    "os-system": "os.system('env > {WS}/child.txt')\ndata = open('{WS}/child.txt').read()",
    "os-popen": "data = os.popen('env').read()",
}


@pytest.mark.parametrize("route", sorted(CHILDREN))
def test_children_get_only_allowed_names(s2: Session, route: str) -> None:
    out = s2.run("import os, subprocess\n" + CHILDREN[route].replace("{WS}", str(s2.workspace)))
    assert out.error is None, out.trace
    data = out.namespace["data"]
    assert "PATH=" in data, data
    assert SECRET_NAME not in data and SECRET not in data
    assert s2.channel.requests == []


def test_writes_ask_and_what_the_agent_set_it_may_read_and_pass_on(tmp_path: Path) -> None:
    denied = _session(tmp_path / "a")
    out = denied.run("import os\nos.environ['CAVE_ENV_TEST_NEW'] = '1'")
    assert out.denied and denied.channel.capabilities == ["env:CAVE_ENV_TEST_NEW"]
    assert "CAVE_ENV_TEST_NEW" not in os.environ
    denied.security.close()
    s = _session(tmp_path / "b", Decision.APPROVE_ONCE)
    try:
        out = s.run(
            "import os, subprocess\nos.environ['CAVE_ENV_TEST_NEW'] = 'v1'\n"
            "mine = os.environ['CAVE_ENV_TEST_NEW']\n"
            f"child = subprocess.run([{ENV!r}], capture_output=True, text=True).stdout"
        )
        assert out.error is None, out.trace
        assert out.namespace["mine"] == "v1" and "CAVE_ENV_TEST_NEW=v1" in out.namespace["child"]
        assert os.environ["CAVE_ENV_TEST_NEW"] == "v1"  # the real environment changed
        assert len(s.channel.requests) == 1
    finally:
        os.environ.pop("CAVE_ENV_TEST_NEW", None)
        s.security.close()


def test_exec_without_an_environment_is_refused_in_a_child(s2: Session) -> None:
    """``os.execv`` would hand the whole environment to the new program. Run in a forked child
    (approved), so that a failure of the check cannot replace the test process."""
    allowed = _session(s2.workspace.parent / "x", Decision.APPROVE_ONCE)
    out = allowed.run(
        "import os\npid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        os.execv('/bin/true', ['true'])\n"
        "    except PermissionError:\n"
        "        os._exit(7)\n"
        "    os._exit(0)\n"
        "status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
    )
    assert out.error is None, out.trace
    assert out.namespace["status"] == 7
    allowed.security.close()


def test_env_get_primitive_is_the_decision_for_os_environ(s2: Session) -> None:
    a = s2.run(f"data = env.get({SECRET_NAME!r})")
    b = s2.run(f"import os\ndata = os.environ.get({SECRET_NAME!r})")
    assert a.denied and b.denied
    ops = [r for r in s2.records() if r["kind"] == "primitive" and r.get("op") == "env.get"]
    assert len(ops) == 2 and all(not r["ok"] for r in ops)


def test_the_guard_is_installed_in_this_process(s2: Session) -> None:
    assert type(os.environ).__name__ == "GuardedEnviron"
    assert sys.modules["posix"].environ is os.environb  # type: ignore[attr-defined]
    assert subprocess.run([ENV], capture_output=True, text=True).stdout.count(SECRET) == 1


def test_a_thread_that_read_as_user_code_is_guarded_once_it_runs_agent_code(s2: Session) -> None:
    """User-side reads are served from a per-thread slot; entering agent code empties it."""
    import threading

    seen: dict[str, object] = {}

    def worker() -> None:
        seen["user"] = os.environ[SECRET_NAME]  # fills this thread's fast path
        try:
            with s2.security.agent_code():
                seen["agent"] = os.environ[SECRET_NAME]
        except PermissionError as exc:
            seen["agent"] = exc
        seen["after"] = os.environ[SECRET_NAME]  # user code again

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["user"] == SECRET and seen["after"] == SECRET
    assert isinstance(seen["agent"], PermissionError)
    assert s2.channel.capabilities == [f"env:{SECRET_NAME}"]


@pytest.mark.parametrize(
    "code",
    [
        "os.environ['PYTHONPATH'] = '/tmp/planted'",
        "os.environ['PATH'] = '/tmp/planted:' + os.environ['PATH']",
        "os.putenv('PATH', '/tmp/planted')",
        "del os.environ['HOME']",
    ],
)
def test_names_that_are_free_to_read_still_ask_to_be_changed(s2: Session, code: str) -> None:
    """Changing PATH or PYTHONPATH would reach every child the kernel starts later (the user's
    ``!python`` included), so the default rules that allow reading them do not allow writing."""
    before = dict(os.environ)
    out = s2.run("import os\n" + code)
    assert out.denied, out.trace
    assert len(s2.channel.requests) == 1 and s2.channel.capabilities[0].startswith("env:")
    assert dict(os.environ) == before


def test_an_explicit_allow_rule_lets_agent_code_change_a_name(tmp_path: Path) -> None:
    s = _session(tmp_path, rules=(("env:CAVE_ENV_TEST_FREE", "allow"),))
    try:
        out = s.run("import os\nos.environ['CAVE_ENV_TEST_FREE'] = 'x'")
        assert out.error is None and os.environ["CAVE_ENV_TEST_FREE"] == "x"
        assert s.channel.requests == []
    finally:
        os.environ.pop("CAVE_ENV_TEST_FREE", None)
        s.security.close()
