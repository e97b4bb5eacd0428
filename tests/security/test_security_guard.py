"""The guard in-process: who is guarded, who is not, and that its state is out of reach."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from security_helpers import ScriptedChannel, Session, make_session

from cave.approvals._protocol import Decision
from cave.security import Effect, Rule
from cave.security import _guard as guard_module


def outside_file(tmp_path: Path) -> Path:
    path = Path(os.path.realpath(tmp_path)) / "outside.txt"
    path.write_text("outside")
    return path


def test_only_code_inside_agent_code_is_guarded(s: Session, tmp_path: Path) -> None:
    target = outside_file(tmp_path)
    assert target.read_text() == "outside"  # this (test) thread: never guarded
    assert s.run(f"open({str(target)!r}).read()").denied
    results: list[Any] = []

    def plain_thread() -> None:
        results.append(open(target).read())

    t = threading.Thread(target=plain_thread)
    t.start()
    t.join()
    assert results == ["outside"]


def test_user_thread_running_during_agent_code_is_not_guarded(s: Session, tmp_path: Path) -> None:
    target = outside_file(tmp_path)
    stop = threading.Event()
    reads: list[str] = []
    errors: list[BaseException] = []

    def user_loop() -> None:
        while not stop.is_set():
            try:
                reads.append(open(target).read())
            except BaseException as exc:  # noqa: B036
                errors.append(exc)
            time.sleep(0.001)

    t = threading.Thread(target=user_loop)
    t.start()
    try:
        out = s.run(
            f"import time\nfor _ in range(50):\n    time.sleep(0.002)\nopen({str(target)!r})"
        )
    finally:
        stop.set()
        t.join()
    assert out.denied and errors == [] and len(reads) > 5


def test_threads_started_by_agent_code_stay_guarded_after_the_block(
    s: Session, tmp_path: Path
) -> None:
    target = outside_file(tmp_path)
    go = threading.Event()
    s.run(
        "import threading\nbox = []\n"
        "def later():\n"
        "    go.wait(10)\n"
        "    try:\n"
        f"        open({str(target)!r}).read(); box.append('read')\n"
        "    except PermissionError as e:\n"
        "        box.append('denied')\n"
        "t = threading.Thread(target=later)\nt.start()\n",
        go=go,
    )
    # agent_code() has exited; the thread it started is still agent code
    go.set()
    for _ in range(200):
        if s.channel.requests:
            break
        time.sleep(0.05)
    assert s.channel.capabilities == [f"fs.read:{target}"]


def test_nested_agent_code_and_exit_order(s: Session, tmp_path: Path) -> None:
    target = outside_file(tmp_path)
    done: list[str] = []

    def worker() -> None:
        with s.security.agent_code():
            with s.security.agent_code():
                pass
            try:
                open(target)
            except PermissionError:
                done.append("still guarded after the inner block")
        open(target).close()
        done.append("free after the outer block")

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert done == ["still guarded after the inner block", "free after the outer block"]


def test_two_sessions_do_not_mix(tmp_path: Path) -> None:
    a = make_session(tmp_path / "a", ScriptedChannel(default=Decision.DENY))
    b = make_session(tmp_path / "b", ScriptedChannel(default=Decision.APPROVE_ONCE))
    target = outside_file(tmp_path)
    assert a.run(f"open({str(target)!r}).read()").denied
    assert b.run(f"data = open({str(target)!r}).read()").namespace["data"] == "outside"
    out = a.run("b_sec.agent_code().__enter__()", b_sec=b.security)
    assert out.denied and "another session" in str(out.error)
    a.security.close()
    b.security.close()


def test_exec_marker_refuses_agent_code_outside_agent_code(tmp_path: Path) -> None:
    s = make_session(tmp_path, exec_marker="<cave-test-marker")
    code = compile("x = 1", "<cave-test-marker-1>", "exec")
    with pytest.raises(PermissionError, match="must run inside"):
        exec(code, {})
    ns: dict[str, Any] = {}

    def worker() -> None:
        with s.security.agent_code():
            exec(code, ns)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert ns["x"] == 1
    exec(compile("y = 2", "<other-name>", "exec"), ns)  # other code is untouched
    s.security.close()
    exec(code, {})  # a closed session no longer claims the marker


def test_forwarders_behave_like_the_originals_outside_agent_code(tmp_path: Path) -> None:
    make_session(tmp_path)  # installs the guard (idempotent)
    import _thread

    assert _thread.start_new_thread is guard_module._start_new_thread
    assert os.open is guard_module._os_open and os.open in os.supports_dir_fd
    # os.open with dir_fd, relative path
    d = os.open(str(tmp_path), os.O_RDONLY)
    try:
        fd = os.open("made.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=d)
        os.write(fd, b"ok")
        os.close(fd)
    finally:
        os.close(d)
    assert (tmp_path / "made.txt").read_bytes() == b"ok"
    with pytest.raises(FileNotFoundError):
        os.open(str(tmp_path / "nope" / "x"), os.O_RDONLY)
    # threads with kwargs, and their results
    box: list[Any] = []
    done = threading.Event()
    _thread.start_new_thread(lambda a, b=0: (box.append(a + b), done.set()), (1,), {"b": 2})
    assert done.wait(5) and box == [3]
    # subprocesses (fork_exec), including a missing program
    assert subprocess.run(["true"]).returncode == 0
    with pytest.raises(FileNotFoundError):
        subprocess.run(["/definitely/not/a/program"])
    # shutil.rmtree uses os.open(..., dir_fd=...) on nested directories
    import shutil

    (tmp_path / "tree" / "a" / "b").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "b" / "f").write_text("x")
    shutil.rmtree(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


def test_os_open_dir_fd_escape_is_resolved_for_agent_code(s: Session, tmp_path: Path) -> None:
    target = outside_file(tmp_path)
    code = (
        "import os\n"
        f"d = os.open({str(s.workspace)!r}, os.O_RDONLY)\n"
        f"os.open(os.path.relpath({str(target)!r}, {str(s.workspace)!r}), os.O_RDONLY, dir_fd=d)"
    )
    out = s.run(code)
    assert out.denied and s.channel.capabilities == [f"fs.read:{target}"]


def test_rmtree_approved_once_covers_the_tree(s: Session) -> None:
    (s.workspace / "build" / "a" / "b").mkdir(parents=True)
    for name in ("x", "a/y", "a/b/z"):
        (s.workspace / "build" / name).write_text("x")
    s.channel.decisions = [Decision.APPROVE_ONCE]
    out = s.run(f"import shutil\nshutil.rmtree({str(s.workspace / 'build')!r})")
    assert out.error is None, out.trace
    assert len(s.channel.requests) == 1  # one question for the whole tree
    assert not (s.workspace / "build").exists()
    assert s.channel.capabilities[-1] == f"fs.delete:{s.workspace / 'build'}"


def test_guard_denial_tracebacks_carry_no_vault(s: Session, tmp_path: Path) -> None:
    target = outside_file(tmp_path)
    caught: list[BaseException] = []

    def worker() -> None:
        with s.security.agent_code():
            try:
                open(target)
            except PermissionError as exc:
                caught.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    tb = caught[0].__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    hook_frame = frames[-1]
    assert hook_frame.f_code.co_name == "hook"
    assert "_handle" not in hook_frame.f_locals
    for value in hook_frame.f_locals.values():
        assert not isinstance(value, types.MethodType)


VAULT_FILES = (
    "_guard.py",
    "_vault_events.py",
    "_vault_forwarded.py",
    "_vault_state.py",
    "_opcontext.py",
    "_forwarders.py",
    "_engine.py",
)
"""The modules whose code runs inside the vault (the guard and the classes split out of it)."""


def test_frames_are_refused_while_the_guard_works(s: Session) -> None:
    """Agent code that runs *inside* the vault's work (here: a gc callback, forced to run at
    every allocation) cannot get a frame, so it cannot walk up into the vault."""
    (s.workspace / "a.txt").write_text("x")
    out = s.run(
        "import gc, sys, threading\n"
        "me = threading.get_ident()\n"
        "seen = {'denied': 0, 'frames': 0, 'vault_frames': 0}\n"
        "def spy(phase, info):\n"
        "    if threading.get_ident() != me or seen['denied'] >= 5:\n"
        "        return\n"
        "    try:\n"
        "        f = sys._getframe(1)\n"
        "    except PermissionError:\n"
        "        seen['denied'] += 1\n"
        "        return\n"
        "    seen['frames'] += 1\n"
        "    while f is not None:\n"
        f"        if f.f_code.co_filename.endswith({VAULT_FILES!r}):\n"
        "            seen['vault_frames'] += 1\n"
        "        f = f.f_back\n"
        "old = gc.get_threshold()\n"
        "gc.callbacks.append(spy)\n"
        "gc.set_threshold(1)\n"
        "try:\n"
        f"    for _ in range(20):\n        open({str(s.workspace / 'a.txt')!r}).close()\n"
        "finally:\n"
        "    gc.set_threshold(*old)\n"
        "    gc.callbacks.remove(spy)\n"
    )
    assert out.error is None, out.trace
    seen = out.namespace["seen"]
    assert seen["vault_frames"] == 0, seen
    assert seen["denied"] > 0, seen  # the spy did run inside the vault, and was refused
    assert seen["frames"] > 0, seen  # and outside it, frames are allowed


_VAULT_TYPES = (
    guard_module._Vault,
    guard_module._Binding,
    guard_module._Session,
)


def test_vault_is_not_reachable_by_attribute_access(s: Session) -> None:
    """Walk everything reachable by attributes from every module and from the agent's names
    (no gc, no frames): no vault, binding, session state, authority or grant book."""
    from cave.security._engine import SessionAuthority
    from cave.security._grants import GrantBook

    forbidden = (*_VAULT_TYPES, SessionAuthority, GrantBook)
    roots: list[Any] = [dict(sys.modules), dict(s.security.primitives), s.security]
    seen: set[int] = set()
    stack = list(roots)
    visited = 0
    deadline = time.monotonic() + 60
    while stack and time.monotonic() < deadline:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        visited += 1
        if isinstance(obj, forbidden):
            pytest.fail(f"reachable by attribute access: {type(obj).__name__}")
        if isinstance(obj, (str, bytes, int, float, bool, type(None), complex, range)):
            continue
        stack.extend(_attribute_children(obj))
    assert visited > 10_000, visited


def _attribute_children(obj: Any) -> list[Any]:
    out: list[Any] = []
    try:
        if isinstance(obj, dict):
            if len(obj) < 50_000:
                out.extend(obj.values())
                out.extend(k for k in obj if not isinstance(k, str))
            return out
        if isinstance(obj, (list, tuple, set, frozenset)):
            return list(obj)[:50_000]
        if isinstance(obj, types.FrameType):
            return out  # frames need audited access (sys._getframe, tb_frame, ...)
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict) or isinstance(d, types.MappingProxyType):
            out.extend(dict(d).values())
        for klass in type(obj).__mro__:
            for slot in klass.__dict__.get("__slots__", ()) or ():
                if isinstance(slot, str):
                    try:
                        out.append(object.__getattribute__(obj, slot))
                    except Exception:
                        pass
        if isinstance(obj, types.FunctionType):
            out.extend([obj.__defaults__, obj.__kwdefaults__, obj.__globals__])
            out.extend(c.cell_contents for c in (obj.__closure__ or ()) if _filled(c))
        elif isinstance(obj, types.MethodType):
            out.extend([obj.__self__, obj.__func__])
        elif isinstance(obj, types.BuiltinMethodType):
            out.append(getattr(obj, "__self__", None))
        import functools

        if isinstance(obj, functools.partial):
            out.extend([obj.func, obj.args, obj.keywords])
    except Exception:
        pass
    return out


def _filled(cell: Any) -> bool:
    try:
        _ = cell.cell_contents
        return True
    except ValueError:
        return False


def test_guard_records_a_summary_of_allowed_events(s: Session) -> None:
    (s.workspace / "a.txt").write_text("x")
    s.run(f"for _ in range(5):\n    open({str(s.workspace / 'a.txt')!r}).read()")
    summary = [r for r in s.records() if r["kind"] == "guard.summary"]
    assert summary and summary[-1]["allowed"]["open"] >= 5


def test_allowed_network_name_covers_its_addresses(s: Session) -> None:
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        pol = s.security.policy.with_rules(Rule(f"net:localhost:{port}", Effect.ALLOW))
        s.security.with_policy(pol)
        out = s.run(
            f"import socket\nc = socket.create_connection(('localhost', {port}), timeout=2)\n"
            "c.close()"
        )
        assert out.error is None, out.trace
        assert s.channel.requests == []
        denied = s.run(
            "import socket\nsocket.getaddrinfo('localhost', 1)\n"
            f"c = socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        )
        assert denied.denied  # another port of the same host is not covered
    finally:
        server.close()
