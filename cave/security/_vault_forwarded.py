"""The vault's side of the forwarders: thread start, ``os.open``, ``fork_exec``, ``os.system``,
and fresh builtin modules.

A base class of ``_guard._Vault`` (which sets the fields declared here and keeps the originals of
the functions ``_forwarders`` replaced): each ``_op_*`` runs the original, after the guard's
checks when the calling thread runs agent code. A class holds no vault; only the hook references
the instance.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

from ._capabilities import Capability
from ._environ import EnvironVault
from ._events import Check, classify, resolve_path, shell_program
from ._forwarders import _child_bootstrap
from ._vault_events import _EventGuard
from ._vault_state import _Binding, _Session, _Ticket

_FRESH_REFUSED = frozenset({"_thread", "_posixsubprocess", "posix", "_imp", "sys", "builtins"})
"""Modules we patched (or singletons): agent code may not build a fresh, unpatched copy."""



class _ForwardedOps(_EventGuard):
    """The ops the forwarders ask for (a base of ``_guard._Vault``, which sets these fields)."""

    tl: threading.local
    tickets: dict[object, _Session]
    lock: threading.Lock
    environ: EnvironVault
    start_new_thread: Callable[..., Any]
    fork_exec: Callable[..., Any]
    os_open: Callable[..., Any]
    create_builtin: Callable[..., Any]
    create_dynamic: Callable[..., Any]
    system: Callable[..., Any]

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



def _first_existing(executables: Any) -> str | None:
    for item in executables or ():
        path = os.fsdecode(item)
        if os.path.exists(path):
            return path
    return None


