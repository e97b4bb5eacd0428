"""The guard: one ``sys.addaudithook`` hook per process, and the vault that holds its state.

How it is built, and why:

* **One hook, installed once** (``install()``), never removed (CPython cannot remove hooks). It
  ignores events it has nothing to say about after one set lookup, and returns at once in a
  thread that is not running agent code, so user cells and kernel threads are unaffected.
* **Which threads run agent code** is kept in a ``threading.local`` inside the vault. A thread
  becomes agent code inside ``Security.agent_code()`` and stays so until the block exits; a
  thread *started* by agent code is agent code for its whole life (``_thread.start_new_thread``
  is replaced by a forwarder, so ``threading``, executors and ``asyncio.to_thread`` are covered).
* **The vault is unreachable by attribute access.** Every piece of state (sessions, policies,
  grants, the per-thread bindings, the original functions we replaced) lives in one object that
  only the hook references, through a default argument that the hook deletes from its frame
  before it raises; nothing in any module global, closure or Cave object points at it. Cave code
  talks to it with ``sys.audit("cave.security", op, payload, box)`` events that only the hook
  receives, and the vault refuses every privileged op (changing a session, its policy or its
  grants) from a thread that is running agent code.
* **Primitives run inside the vault**, so their success (which consumes a once grant) is judged
  by Cave code, and while one runs, the raw events it causes are allowed only if they match the
  capability it was granted (a "ticket"), not blanket-trusted.
* **Frames**: while the vault works on an agent thread's behalf, that thread may not obtain
  frames (``sys._getframe``, ``tb_frame``, ``gi_frame``, ...), so a finalizer that runs in the
  middle cannot walk up into the vault. Outside that window frames are allowed: ``warnings``,
  ``traceback``, ``logging`` and ``collections.namedtuple`` need them.

Rejected designs: a ``contextvars`` flag (threads do not inherit it, and agent code can set it);
deciding by frame inspection ("is agent code on the stack") on every event (user cells calling a
function the agent wrote would be checked too, and it costs a stack walk per event); keeping the
state on the ``Security`` object (``security._policy = ...`` would switch the guard off).

What this does not stop (``docs/security.md`` has the full table, each with a test): ctypes
calls through function pointers that already exist (CPython 3.11 raises no event for them),
monkeypatching shared modules so that *kernel* threads later run agent-chosen code, work handed
to threads that already existed (a user's executor, the kernel's event loop), metadata via
``os.stat``, and symlink races between the check and the use. ``os.environ`` is guarded too: see
``_environ`` (its data lives in this vault).
"""

from __future__ import annotations

import contextvars
import functools
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._capabilities import Capability
from ._engine import Permit, SessionAuthority
from ._environ import ENV_EVENT, EnvironVault, install_environ
from ._events import EVENTS, Check, Refusal, classify, resolve_path, shell_program
from ._ops import run_op
from ._policy import HARMLESS_ENV, Effect, Policy

__all__ = ["EVENT", "install"]

EVENT = "cave.security"
"""The audit event Cave code uses to talk to the vault."""

_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
_FRAME_EVENTS = frozenset({"sys._getframe", "sys._getframemodulename"})
_GUARDED_KILL = frozenset({"os.kill", "os.killpg"})
_SPECIAL = frozenset(
    {"object.__getattr__", "object.__setattr__", "object.__delattr__", "exec", "os.kill"}
)
_FRESH_REFUSED = frozenset({"_thread", "_posixsubprocess", "posix", "_imp", "sys", "builtins"})
"""Modules we patched (or singletons): agent code may not build a fresh, unpatched copy."""

_EXEC_WITHOUT_ENV = (
    "os.exec* without an environment would hand this process's whole environment to the new "
    "program; use os.execve(path, args, env) with the variables it needs"
)

_RAW_ENVIRON = (
    "agent code may not read os.environ's raw dictionary; use os.environ[NAME] or "
    "env.get(NAME), which the policy decides"
)

_ENV_WRITES = frozenset({"os.putenv", "os.unsetenv"})

_PRIVILEGED = frozenset(
    {"register", "set_policy", "restore", "cancel", "close", "spawn", "extend"}
)

_install_lock = threading.Lock()


# -- the forwarders that replace patched functions (no state: they only emit events) ------------
def _ask(op: str, payload: tuple[Any, ...], _audit: Any = sys.audit) -> Any:
    box: list[Any] = []
    _audit(EVENT, op, payload, box)
    if not box:
        raise RuntimeError(
            f"Cave's guard did not answer ({op}); sys.audit may have been replaced. Restart "
            "the kernel."
        )
    return box[0]


def _start_new_thread(function: Any, args: Any, kwargs: Any = None) -> Any:
    """Forwarder for ``_thread.start_new_thread``: threads started by agent code are agent code."""
    return _ask("thread", (function, args, kwargs))


def _fork_exec(*args: Any) -> Any:
    """Forwarder for ``_posixsubprocess.fork_exec`` (raises no audit event of its own)."""
    return _ask("fork_exec", args)


def _os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
    """Forwarder for ``os.open``: the ``open`` audit event does not carry ``dir_fd``."""
    if not isinstance(path, (int, str, bytes)):
        path = os.fspath(path)  # agent code runs here, outside the vault
    return int(_ask("open_at", (path, flags, mode, dir_fd)))


def _os_system(command: Any) -> int:
    """Forwarder for ``os.system``: agent code's shell gets the filtered environment."""
    return int(_ask("system", (command,)))


def _create_builtin(spec: Any) -> Any:
    """Forwarder for ``_imp.create_builtin``: no fresh copies of patched modules for agents."""
    return _ask("imp", ("builtin", str(spec.name), None, spec))


def _create_dynamic(spec: Any, file: Any = None) -> Any:
    """Forwarder for ``_imp.create_dynamic`` (extension modules)."""
    return _ask("imp", ("dynamic", str(spec.name), file, spec))


def _child_bootstrap(
    ticket: object, function: Any, args: Any, kwargs: Any, _audit: Any = sys.audit
) -> Any:
    """First frame of a thread that agent code started: mark the thread, then run it."""
    box: list[Any] = []
    _audit(EVENT, "thread_begin", (ticket,), box)
    if not box or box[0] is not True:
        raise RuntimeError("Cave's guard did not mark this thread; refusing to run it")
    del ticket, box
    return function(*args, **(kwargs or {}))


# -- per-thread state ---------------------------------------------------------------------
class _Ticket:
    """What raw events a running primitive may cause (exact capabilities and subtrees)."""

    __slots__ = ("exact", "trees")

    def __init__(self, exact: set[str], trees: list[tuple[str, str]]) -> None:
        self.exact = exact
        self.trees = trees

    def covers(self, cap: Capability) -> bool:
        if str(cap) in self.exact:
            return True
        for kind, root in self.trees:
            if cap.kind == kind and (cap.resource == root or cap.resource.startswith(root + "/")):
                return True
        return False


class _Binding:
    """One thread running agent code for one session."""

    __slots__ = (
        "counts",
        "depth",
        "life",
        "names",
        "nonces",
        "popen",
        "session",
        "skip",
        "ticket",
        "trees",
    )

    def __init__(self, session: _Session, *, life: bool) -> None:
        self.session = session
        self.life = life
        """True for threads agent code started: agent code until they end."""
        self.nonces: list[object] = []
        self.depth = 0
        """>0 while the vault works on this thread's behalf."""
        self.ticket: _Ticket | None = None
        self.skip: tuple[str, Any] | None = None
        self.trees: list[str] = []
        self.names: dict[str, set[str]] = {}
        self.popen: str | None = None
        self.counts: dict[str, int] = {}


class _Session:
    """One ``Security`` instance's state, inside the vault."""

    __slots__ = (
        "authority", "env_set", "exec_marker", "ext_ops", "handle", "parent", "spawned",
        "workspace",
    )

    def __init__(
        self,
        handle: object,
        authority: SessionAuthority,
        exec_marker: str | None,
        parent: _Session | None = None,
    ) -> None:
        self.handle = handle
        self.authority = authority
        self.workspace = authority.workspace
        self.exec_marker = exec_marker
        self.spawned: set[int] = set()
        self.env_set: set[str] = set()
        """Environment names agent code set itself (it knows their values): readable freely."""
        self.parent = parent
        """The session this one was spawned from (a sub-agent's), or None."""
        self.ext_ops: dict[str, Callable[..., Any]] = {}
        """Operations added with ``Security.extend`` (skills, agents), run inside the vault."""

    def descends_from(self, other: _Session) -> bool:
        """True if ``other`` is this session's parent, grandparent, ... (not itself)."""
        node = self.parent
        while node is not None:
            if node is other:
                return True
            node = node.parent
        return False


# -- the vault ----------------------------------------------------------------------------
class _Vault:
    """All the guard's state. Only the hook references an instance (see the module doc)."""

    def __init__(self) -> None:
        import _imp
        import _posixsubprocess
        import _thread

        self.tl = threading.local()
        self.sessions: dict[object, _Session] = {}
        self.tickets: dict[object, _Session] = {}
        self.lock = threading.Lock()
        self.start_new_thread = _thread.start_new_thread
        self.fork_exec = _posixsubprocess.fork_exec
        self.os_open = os.open
        self.create_builtin = _imp.create_builtin
        self.create_dynamic = _imp.create_dynamic
        self.getaddrinfo = socket.getaddrinfo
        self.system = os.system
        self.environ = EnvironVault(os.environ._data)  # type: ignore[attr-defined]
        self.protected_code: list[Any] = []
        """Code objects whose generators' frames agent code may not read (agent_code())."""
        self.interesting = EVENTS | _SPECIAL | _FRAME_EVENTS | {EVENT, ENV_EVENT, "os.killpg"}

    # entry point: returns None (allow) or (exception class, args) for the hook to raise
    def handle(self, event: str, args: tuple[Any, ...]) -> Any:
        try:
            if event == ENV_EVENT:
                return self._env(args)
            if event == EVENT:
                return self._command(args)
            b: _Binding | None = getattr(self.tl, "b", None)
            if b is None:
                if event == "exec" and self.sessions:
                    return self._exec_outside(args)
                return None
            return self._guard(b, event, args)
        except BaseException as exc:  # noqa: B036 - never let a frame of ours reach the caller
            return _sanitize(exc)

    # -- commands ----------------------------------------------------------------------
    def _command(self, args: tuple[Any, ...]) -> Any:
        if len(args) != 3 or type(args[2]) is not list or type(args[1]) is not tuple:
            return None
        op, payload, box = args
        b: _Binding | None = getattr(self.tl, "b", None)
        method = getattr(self, "_op_" + str(op), None)
        if method is None:
            return None
        if b is not None:
            b.depth += 1
        try:
            if op in _PRIVILEGED and b is not None:
                why = f"agent code may not change the security session ({op})"
                return self._refuse(b, f"cave.security:{op}", why)
            result = method(b, payload)
        finally:
            if b is not None:
                b.depth -= 1
        if type(result) is tuple and len(result) == 2 and isinstance(result[0], type):
            return result  # an error to raise
        list.append(box, result)
        return None

    def _op_ping(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        return True

    def _op_is_agent(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        return b is not None and b.depth <= 1

    def _op_register(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        workspace, policy, channel, audit, protected, exec_marker, code = payload
        if code is not None and code not in self.protected_code:
            self.protected_code.append(code)
        authority = SessionAuthority(
            workspace=Path(workspace),
            policy=_private_copy(policy),
            channel=channel,
            audit=audit,
            protected=protected,
            start_thread=self._start_aside,
        )
        handle = _Handle()
        with self.lock:
            self.sessions[handle] = _Session(handle, authority, exec_marker)
        return handle

    def _session(self, handle: Any) -> _Session:
        session = self.sessions.get(handle)
        if session is None:
            raise _Refused("this Security session is closed or unknown")
        return session

    def _op_spawn(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        """A sub-agent's session under ``handle``'s (user side; agents use ``agents.spawn``)."""
        handle, label, policy = payload
        return self.spawn_child(self._session(handle), str(label), policy)

    def spawn_child(self, parent: _Session, label: str, policy: Policy) -> object:
        from ._attenuation import ChildAuthority

        authority = ChildAuthority(
            parent=parent.authority, label=label, policy=_private_copy(policy)
        )
        handle = _Handle()
        with self.lock:
            self.sessions[handle] = _Session(handle, authority, parent.exec_marker, parent)
        authority.record("agent.spawn", agent=label, rules=len(authority.policy.rules))
        return handle

    def _op_extend(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        handle, ops = payload
        self._session(handle).ext_ops.update(dict(ops))
        return True

    def _op_close(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        with self.lock:
            self.sessions.pop(payload[0], None)
        return True

    def _op_set_policy(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        handle, policy, by = payload
        self._session(handle).authority.set_policy(_private_copy(policy), by=str(by))
        return True

    def _op_get_policy(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        return _private_copy(self._session(payload[0]).authority.policy)

    def _op_grants(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        return self._session(payload[0]).authority.grants()

    def _op_snapshot(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        return self._session(payload[0]).authority.snapshot()

    def _op_restore(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        handle, snapshot = payload
        self._session(handle).authority.restore(snapshot)
        return True

    def _op_cancel(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        return self._session(payload[0]).authority.cancel_pending()

    def _op_enter(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        session = self._session(payload[0])
        if b is None:
            self.environ.forget_thread()
            b = _Binding(session, life=False)
            self.tl.b = b
        elif b.session is not session:
            if not session.descends_from(b.session):
                raise _Refused("this thread is already running agent code for another session")
            # A sub-agent's step inside its parent's code: narrower authority until exit.
            nested = _Nested(b.session)
            b.session = session
            b.nonces.append(nested)
            return nested
        nonce = object()
        b.nonces.append(nonce)
        return nonce

    def _op_exit(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        handle, nonce = payload
        if b is None or not b.nonces or b.nonces[-1] is not nonce:
            if b is not None:
                return self._refuse(
                    b, "cave.security:exit", "agent_code() exit without its matching enter"
                )
            raise _Refused("agent_code() exit without its matching enter")
        b.nonces.pop()
        if isinstance(nonce, _Nested):
            self._summarise(b)
            b.session = nonce.outer
            return True
        if not b.nonces and not b.life:
            self._summarise(b)
            del self.tl.b
        return True

    def _summarise(self, b: _Binding) -> None:
        if b.counts:
            b.session.authority.record("guard.summary", allowed=dict(b.counts))
            b.counts.clear()

    def _op_thread(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        function, args, kwargs = payload
        start = self.start_new_thread
        if b is None:
            return start(function, args) if kwargs is None else start(function, args, kwargs)
        ticket = object()
        with self.lock:
            self.tickets[ticket] = b.session
        boot = functools.partial(_child_bootstrap, ticket, function, args, kwargs)
        try:
            return start(boot, ())
        except BaseException:
            with self.lock:
                self.tickets.pop(ticket, None)
            raise

    def _op_thread_begin(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        with self.lock:
            session = self.tickets.pop(payload[0], None)
        if session is None or b is not None:
            return False
        self.environ.forget_thread()  # a new thread has none; this makes sure
        self.tl.b = _Binding(session, life=True)
        return True

    def _start_aside(self, fn: Callable[[], None]) -> Any:
        """Start ``fn`` on a thread that is not agent code (approval channels run there)."""
        return self.start_new_thread(fn, ())

    def _op_open_at(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        path, flags, mode, dir_fd = payload
        if b is None:
            return self.os_open(path, flags, mode, dir_fd=dir_fd)
        real = resolve_path(path, dir_fd)
        if real is not None:
            result = classify("open", (real, None, flags))
            if isinstance(result, tuple):
                err = self._checks(b, "open", result)
                if err is not None:
                    return err
        b.skip = ("open", path)
        try:
            return self.os_open(path, flags, mode, dir_fd=dir_fd)
        finally:
            b.skip = None

    def _op_fork_exec(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        if b is not None:
            argv = [os.fsdecode(a) for a in (payload[0] or ())]
            program = _first_existing(payload[1]) or (argv[0] if argv else "?")
            cwd = os.fsdecode(payload[4]) if len(payload) > 4 and payload[4] is not None else None
            program = shell_program(program, cwd)
            if b.popen == program:
                b.popen = None
            else:
                check = Check(Capability("shell", program), f"run {' '.join(argv)}", {"argv": argv})
                err = self._checks(b, "fork_exec", (check,))
                if err is not None:
                    return err
            if len(payload) > 5 and payload[5] is None:  # no env=: only what the agent may read
                env = self.environ.child_env(lambda name: self._env_visible(b, name))
                payload = (*payload[:5], env, *payload[6:])
        pid = self.fork_exec(*payload)
        if b is not None:
            b.session.spawned.add(int(pid))
        return pid

    # -- the environment (``_environ``) --------------------------------------------------
    def _env(self, args: tuple[Any, ...]) -> Any:
        if len(args) != 4 or type(args[3]) is not list:
            return None
        op, a, c, box = args
        b: _Binding | None = getattr(self.tl, "b", None)
        if b is None or b.depth > 0:  # not agent code, or Cave working on its behalf
            if b is None:
                self.environ.remember_thread()
            list.append(box, self.environ.plain(str(op), a, c))
            return None
        b.depth += 1
        try:
            if op == "data":
                return self._refuse(b, "os.environ", _RAW_ENVIRON)
            result = self.environ.agent(
                str(op),
                a,
                c,
                visible=lambda name: self._env_visible(b, name),
                decide=lambda name: self._env_decide(b, name),
                write=lambda name, is_set, fn: self._env_write(b, name, is_set, fn),
                count=lambda: self._count(b, "os.environ"),
            )
        finally:
            b.depth -= 1
        list.append(box, result)
        return None

    def _count(self, b: _Binding, event: str) -> None:
        b.counts[event] = b.counts.get(event, 0) + 1

    def _env_visible(self, b: _Binding, name: str) -> bool:
        """Readable by agent code without asking: allowed by policy, a session grant, or set by
        the agent itself."""
        if name in b.session.env_set:
            return True
        cap = Capability("env", name)
        authority = b.session.authority
        return authority.allowed_by_policy(cap) or authority.session_grant_covers(cap)

    def _env_decide(self, b: _Binding, name: str) -> None:
        """The ``env.get`` primitive decides (policy, grants, approval, audit) or raises."""
        run_op(_OpContext(self, b), "env.get", (name,))

    def _env_write(self, b: _Binding, name: str, is_set: bool, fn: Callable[[], None]) -> None:
        cap = Capability("env", name)
        verb = "set" if is_set else "unset"
        check = Check(cap, f"{verb} environment variable {name}", {"name": name})
        err = self._checks(b, "os.putenv" if is_set else "os.unsetenv", (check,))
        if err is not None:
            raise err[0](*err[1])
        outer = b.ticket
        b.ticket = _Ticket({str(cap)}, [])
        try:
            fn()
        finally:
            b.ticket = outer
        if is_set:
            b.session.env_set.add(name)
        else:
            b.session.env_set.discard(name)

    def _op_system(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        command = payload[0]
        if b is None:
            return self.system(command)
        text = os.fsdecode(command) if isinstance(command, bytes) else command
        if not isinstance(text, str):
            raise TypeError(f"os.system takes a str command, not {type(command).__name__}")
        checks = classify("os.system", (text,))
        assert isinstance(checks, tuple)
        err = self._checks(b, "os.system", checks)
        if err is not None:
            return err
        env = dict(
            entry.split(b"=", 1)
            for entry in self.environ.child_env(lambda name: self._env_visible(b, name))
        )
        outer = b.ticket
        b.ticket = _Ticket({str(c.capability) for c in checks}, [])
        try:
            pid = os.posix_spawn("/bin/sh", ["sh", "-c", text], env)
        finally:
            b.ticket = outer
        b.session.spawned.add(pid)
        try:
            return os.waitpid(pid, 0)[1]
        except BaseException:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
            raise

    def _op_imp(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        kind, name, file, spec = payload
        if b is not None and name in _FRESH_REFUSED:
            return self._refuse(
                b, "import", f"agent code may not build a fresh copy of the {name} module"
            )
        if kind == "builtin":
            return self.create_builtin(spec)
        return self.create_dynamic(spec) if file is None else self.create_dynamic(spec, file)

    def _op_call(self, b: _Binding | None, payload: tuple[Any, ...]) -> Any:
        handle, op, args, code_line = (tuple(payload) + (None,))[:4]
        session = b.session if b is not None else self._session(handle)
        if b is None:
            b = _Binding(session, life=False)  # a user cell calling a primitive: no guard
            b.depth = 1
        line = code_line if type(code_line) is str else None
        ext = session.ext_ops.get(str(op))
        if ext is not None:
            return ext(_OpContext(self, b, line), *args)
        return run_op(_OpContext(self, b, line), str(op), args)

    # -- the guard proper --------------------------------------------------------------
    def _guard(self, b: _Binding, event: str, args: tuple[Any, ...]) -> Any:
        if b.skip is not None and b.skip[0] == event and args and _same(args[0], b.skip[1]):
            b.skip = None
            return None
        b.depth += 1
        try:
            if event in _SPECIAL or event in _FRAME_EVENTS or event in _GUARDED_KILL:
                return self._special(b, event, args)
            if event == "os.exec" and (len(args) < 3 or args[2] is None):
                return self._refuse(b, event, _EXEC_WITHOUT_ENV)
            result = classify(event, args)
            if result is None:
                return None
            if isinstance(result, Refusal):
                return self._refuse(b, event, result.reason)
            return self._checks(b, event, result)
        finally:
            b.depth -= 1

    def _special(self, b: _Binding, event: str, args: tuple[Any, ...]) -> Any:
        if event in _FRAME_EVENTS:
            if b.depth > 1:
                return self._refuse(b, event, "no frames while Cave's guard is working")
            return None
        if event == "object.__getattr__":
            name = args[1] if len(args) > 1 else None
            if name in _FRAME_ATTRS:
                if b.depth > 1:
                    return self._refuse(b, event, "no frames while Cave's guard is working")
                if name == "gi_frame" and getattr(args[0], "gi_code", None) in self.protected_code:
                    return self._refuse(b, event, "the agent_code() generator is Cave's")
            return None
        if event in ("object.__setattr__", "object.__delattr__"):
            target, name = args[0], args[1] if len(args) > 1 else ""
            if _is_caves(target, name):
                return self._refuse(
                    b, event, f"agent code may not modify Cave's own code ({name!r})"
                )
            return None
        if event in _GUARDED_KILL:
            pid, sig = (tuple(args) + (None, None))[:2]
            if sig == 0 or pid in b.session.spawned:
                return None
            check = Check(
                Capability("shell", "os.kill"), f"send signal {sig} to process {pid}", {"pid": pid}
            )
            return self._checks(b, event, (check,))
        return None

    def _checks(self, b: _Binding, event: str, checks: tuple[Check, ...]) -> Any:
        authority = b.session.authority
        for check in checks:
            cap = check.capability
            if b.ticket is not None and b.ticket.covers(cap):
                continue
            if event in _ENV_WRITES and _read_only_allow(authority, cap):
                # Reading PATH or PYTHONPATH is harmless; changing them (for every child the
                # kernel starts later, the user's included) is not: ask, unless a grant covers it.
                try:
                    permit = authority.authorize(
                        cap,
                        origin=f"guard:{event}",
                        summary=check.summary,
                        details=check.details,
                        at_least_ask=True,
                    )
                except PermissionError as exc:
                    return (PermissionError, (str(exc),))
                authority.settle(permit, ok=True)
                self._allowed(b, event, check, permit)
                continue
            if authority.allowed_by_policy(cap):
                b.counts[event] = b.counts.get(event, 0) + 1
                if cap.kind == "net" and event != "socket.connect":
                    self._remember_name(b, cap)
                elif event == "subprocess.Popen":
                    b.popen = cap.resource
                continue
            if cap.kind == "net" and self._associated(b, cap):
                continue
            if cap.kind == "fs.delete" and _under(cap.resource, b.trees):
                if not authority.is_denied(cap):
                    continue
            try:
                permit = authority.authorize(
                    cap,
                    origin=f"guard:{event}",
                    summary=check.summary,
                    details=check.details,
                    grant_as=check.grant_as,
                )
            except PermissionError as exc:
                return (PermissionError, (str(exc),))
            authority.settle(permit, ok=True)
            self._allowed(b, event, check, permit)
        return None

    def _allowed(self, b: _Binding, event: str, check: Check, permit: Permit) -> None:
        cap = check.capability
        if permit.via == "policy":
            b.counts[event] = b.counts.get(event, 0) + 1
        else:
            b.session.authority.record(
                "guard.allowed",
                event=event,
                capability=str(cap),
                via=permit.via,
                reason=permit.reason,
            )
            if event == "shutil.rmtree":
                b.trees.append(cap.resource)
        if event == "subprocess.Popen":
            b.popen = cap.resource
        if cap.kind == "net" and event != "socket.connect":
            self._remember_name(b, cap)

    def _remember_name(self, b: _Binding, cap: Capability) -> None:
        host, port = _split_host_port(cap.resource)
        if host is None or _is_ip(host):
            return
        b.skip = ("socket.getaddrinfo", host)
        try:
            infos = self.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return
        finally:
            b.skip = None
        for info in infos[:16]:
            ip = str(info[4][0])
            b.names.setdefault(ip, set()).add(host)
        if len(b.names) > 256:
            b.names.clear()

    def _associated(self, b: _Binding, cap: Capability) -> bool:
        """A connect to an IP that a host name allowed in this thread resolves to."""
        host, _port = _split_host_port(cap.resource)
        if host is None or host not in b.names:
            return False
        if b.session.authority.policy.decide(cap).effect is Effect.DENY:
            return False
        b.counts["socket.connect"] = b.counts.get("socket.connect", 0) + 1
        return True

    def _refuse(self, b: _Binding, event: str, reason: str) -> Any:
        b.session.authority.record("guard.refused", event=event, reason=reason)
        return (PermissionError, (f"Cave guard: {reason}",))

    def _exec_outside(self, args: tuple[Any, ...]) -> Any:
        """Agent code (by its file name) executed outside ``agent_code()``: refuse, fail closed."""
        code = args[0] if args else None
        filename = getattr(code, "co_filename", "")
        if not isinstance(filename, str):
            return None
        for session in list(self.sessions.values()):
            marker = session.exec_marker
            if marker and filename.startswith(marker):
                session.authority.record("guard.refused", event="exec", reason=filename)
                return (
                    PermissionError,
                    (
                        f"Cave guard: agent code ({filename}) must run inside "
                        "Security.agent_code(); refusing to run it unguarded",
                    ),
                )
        return None


class _OpContext:
    """What an operation in ``_ops`` may do: get a permit, run with a ticket, settle."""

    def __init__(self, vault: _Vault, b: _Binding, code_line: str | None = None) -> None:
        self._vault = vault
        self._b = b
        self.code_line = code_line
        self.authority = b.session.authority
        self.workspace = b.session.workspace

    def permit(self, check: Check, origin: str) -> Permit:
        return self.authority.authorize(
            check.capability,
            origin=origin,
            summary=check.summary,
            details=check.details,
            code_line=self.code_line,
            grant_as=check.grant_as,
        )

    def run_with(self, exact: set[str], trees: list[tuple[str, str]], fn: Callable[[], Any]) -> Any:
        b = self._b
        outer = b.ticket
        b.ticket = _Ticket(exact, trees)
        try:
            return fn()
        finally:
            b.ticket = outer

    def resolve_host(self, host: str, port: int) -> list[str]:
        b = self._b
        b.skip = ("socket.getaddrinfo", host)
        try:
            infos = self._vault.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        finally:
            b.skip = None
        return sorted({str(i[4][0]) for i in infos})

    def spawned(self, pid: int) -> None:
        self._b.session.spawned.add(pid)

    # -- for operations added with Security.extend (skills, sub-agents) ----------------------
    @property
    def handle(self) -> object:
        """The handle of the session this operation runs for."""
        return self._b.session.handle

    def owns(self, handle: object) -> bool:
        """True if ``handle`` is a sub-agent (at any depth) of this operation's session."""
        child = self._vault.sessions.get(handle)
        return child is not None and child.descends_from(self._b.session)

    def spawn(self, label: str, policy: Policy, ops: Mapping[str, Callable[..., Any]]) -> object:
        """A sub-agent session under this one (attenuated, see ``_attenuation``) with ``ops``."""
        handle = self._vault.spawn_child(self._b.session, label, policy)
        self._vault.sessions[handle].ext_ops.update(ops)
        return handle

    def aside(self, fn: Callable[[], Any], cancel: Callable[[], None]) -> Any:
        """Run Cave's ``fn`` on a thread that is not agent code (a sub-agent's model call) and
        wait; an interrupt of the waiting thread calls ``cancel`` and is re-raised."""
        done = threading.Event()
        box: list[Any] = []
        context = contextvars.copy_context()

        def run() -> None:
            try:
                box.append((True, context.run(fn)))
            except BaseException as exc:  # noqa: B036 - handed to the waiting thread
                box.append((False, exc))
            finally:
                done.set()

        self._vault.start_new_thread(run, ())
        try:
            while not done.wait(0.05):
                pass
        except BaseException:
            cancel()
            done.wait(10.0)
            raise
        ok, value = box[0]
        if not ok:
            raise value
        return value


class _Nested:
    """The nonce of a sub-agent's ``enter`` on a thread already running its parent's code."""

    __slots__ = ("outer",)

    def __init__(self, outer: _Session) -> None:
        self.outer = outer


class _Handle:
    """An opaque session handle (useless without the vault, which checks the caller)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<cave security session>"


class _Refused(Exception):
    """Raised inside the vault for a refused command; becomes a PermissionError."""


def _read_only_allow(authority: SessionAuthority, cap: Capability) -> bool:
    """``cap`` is an ``env`` capability allowed only by a default harmless-name rule."""
    if cap.kind != "env":
        return False
    verdict = authority.policy.decide(cap)
    return (
        verdict.effect is Effect.ALLOW
        and verdict.rule is not None
        and verdict.rule.source == HARMLESS_ENV
    )


def _sanitize(exc: BaseException) -> tuple[type[BaseException], tuple[Any, ...]]:
    """An exception to raise *instead of* ``exc``: same type and message, none of our frames."""
    if isinstance(exc, _Refused):
        return (PermissionError, (f"Cave guard: {exc.args[0] if exc.args else 'refused'}",))
    kind = type(exc)
    if isinstance(exc, OSError):
        if exc.filename is not None:
            return (kind, (exc.errno, exc.strerror, exc.filename))
        return (kind, tuple(exc.args))
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) or not isinstance(exc, Exception):
        try:
            kind(*exc.args)
            return (kind, tuple(exc.args))
        except Exception:
            return (kind, ())
    try:
        message = str(exc)
    except Exception:
        message = kind.__name__
    if kind.__module__ == "builtins":
        return (kind, tuple(exc.args))
    return (PermissionError, (f"Cave guard failed closed: {kind.__name__}: {message}",))


def _private_copy(policy: Policy) -> Policy:
    """A deep copy nobody else holds (a frozen dataclass can still be poked with setattr)."""
    if not isinstance(policy, Policy):
        raise TypeError(f"expected a Policy, got {type(policy).__name__}")
    return Policy.from_dict(policy.to_dict()).with_paths(policy.path_dirs)


def _same(a: Any, b: Any) -> bool:
    if type(a) in (str, bytes) and type(b) in (str, bytes):
        return bool(a == b)
    return a is b


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def _is_caves(target: Any, name: Any) -> bool:
    module = ""
    if isinstance(target, type):
        module = type.__getattribute__(target, "__module__")
    elif type(target).__name__ == "function" and name in (
        "__code__",
        "__defaults__",
        "__kwdefaults__",
    ):
        module = getattr(target, "__module__", "") or ""
    return isinstance(module, str) and (module == "cave" or module.startswith("cave."))


def _first_existing(executables: Any) -> str | None:
    for item in executables or ():
        path = os.fsdecode(item)
        if os.path.exists(path):
            return path
    return None


def _split_host_port(resource: str) -> tuple[str | None, int | None]:
    if resource.startswith("unix:"):
        return None, None
    if resource.startswith("["):
        end = resource.find("]")
        host, rest = resource[1:end], resource[end + 1 :]
    else:
        host, _, rest = resource.partition(":")
        rest = ":" + rest if rest else ""
    port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    return host, port


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except OSError:
        return False


def install() -> None:
    """Install the process-wide hook once. Idempotent; call it from a non-agent thread."""
    box: list[Any] = []
    sys.audit(EVENT, "ping", (), box)
    if box:
        return
    with _install_lock:
        box = []
        sys.audit(EVENT, "ping", (), box)
        if box:
            return
        vault = _Vault()
        sys.addaudithook(_make_hook(vault.handle, frozenset(vault.interesting)))
        del vault
        _patch()


def _make_hook(handle: Any, interesting: frozenset[str]) -> Callable[[str, tuple[Any, ...]], None]:
    def hook(
        event: str,
        args: tuple[Any, ...],
        _handle: Any = handle,
        _interesting: frozenset[str] = interesting,
    ) -> None:
        if event not in _interesting:
            return
        try:
            err = _handle(event, args)
        finally:
            del _handle  # nothing of the vault stays in a frame a traceback can reach
        if err is not None:
            raise err[0](*err[1])

    return hook


def _patch() -> None:
    import _imp
    import _posixsubprocess
    import _thread
    import subprocess

    _thread.start_new_thread = _start_new_thread
    _thread.start_new = _start_new_thread
    threading._start_new_thread = _start_new_thread  # type: ignore[attr-defined]
    _posixsubprocess.fork_exec = _fork_exec
    subprocess._fork_exec = _fork_exec  # type: ignore[attr-defined]
    original_open = os.open
    os.open = _os_open
    posix = sys.modules.get("posix")
    if posix is not None:
        posix.open = _os_open  # type: ignore[attr-defined]
    if original_open in os.supports_dir_fd:
        os.supports_dir_fd.add(_os_open)
    _imp.create_builtin = _create_builtin
    _imp.create_dynamic = _create_dynamic
    os.system = _os_system
    if posix is not None:
        posix.system = _os_system  # type: ignore[attr-defined]
    install_environ()
