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

Where the code lives: the hook, ``install()`` and the vault's commands (sessions, enter/exit,
primitive calls, the environment) are here, in ``_Vault``. Its two base classes hold the rest of
its methods: ``_vault_events._EventGuard`` is the guard proper (raw events on agent threads,
frame protection, Cave's own code, signals, the capability checks) and
``_vault_forwarded._ForwardedOps`` runs what the forwarders ask for (thread start, ``os.open``,
``fork_exec``, ``os.system``, fresh builtin modules). The records the vault keeps (bindings,
sessions, tickets, handles) are in ``_vault_state``; the operation context handed to primitives
is in ``_opcontext``; the stateless forwarders and the patching are in ``_forwarders``. None of
those modules holds the vault in a global: only the hook references the instance, as above.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._capabilities import Capability
from ._engine import SessionAuthority
from ._environ import ENV_EVENT, EnvironVault
from ._events import EVENTS, Check
from ._forwarders import EVENT, _patch
from ._forwarders import _ask as _ask
from ._forwarders import _os_open as _os_open
from ._forwarders import _start_new_thread as _start_new_thread
from ._opcontext import _OpContext
from ._ops import run_op
from ._policy import Policy
from ._vault_events import _FRAME_EVENTS, _SPECIAL
from ._vault_forwarded import _ForwardedOps
from ._vault_state import _Binding, _Handle, _Nested, _Refused, _Session, _Ticket

__all__ = ["EVENT", "install"]

_RAW_ENVIRON = (
    "agent code may not read os.environ's raw dictionary; use os.environ[NAME] or "
    "env.get(NAME), which the policy decides"
)

_PRIVILEGED = frozenset(
    {"register", "set_policy", "restore", "cancel", "close", "spawn", "extend"}
)

_install_lock = threading.Lock()


class _Vault(_ForwardedOps):
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

