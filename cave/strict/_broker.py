"""The kernel side of the broker: a confined worker's requests, decided as guard mode decides.

Each request is performed by the kernel thread that waits for the step, inside the session's
``Security.agent_code()`` block (kept open across back-to-back requests, see ``release``): the
same guard hook, policy, grants, approval widget and audit log as when agent code runs in the
kernel (guard mode), because it *is* the same code path (an ``os.open`` here is the ``open``
event the guard checks there). What goes back:

* ``open`` (files and directories): the opened descriptor, by ``SCM_RIGHTS``;
* ``connect``: a connected TCP socket's descriptor (the kernel resolves the name: the worker
  cannot make an inet socket, and the guard checks ``net:host:port``), bounded by the step's
  deadline;
* ``run``: a finished process's exit status and output (argv only, run with the environment the
  policy allows, in its own process group, killed at its timeout or when the step's time is up);
* ``env``: one environment value, asked and audited as ``env:NAME`` (the ``env`` primitive); a
  name that is not set is answered "not set" at once (its absence is not a secret);
* ``primitive``: a call of ``fs``/``shell``/``net``/``env``/``human`` with plain-data arguments.

Arguments are checked for type here: the worker is confined code, so nothing it sends is trusted.
Errors go back as ``(exception name, args)`` and are raised again in the agent's code.
"""

from __future__ import annotations

import builtins
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Broker"]

MAX_RUN_OUTPUT = 10_000_000
"""Bytes of stdout (and of stderr) a brokered process may return; the rest is cut."""


def _need(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise TypeError(f"broker request: {what} has the wrong type ({type(value).__name__})")
    return value


class Broker:
    """Services one worker's requests; ``handle`` returns ``(reply, fds)``."""

    def __init__(self, security: Callable[[], Any], child_env: Callable[[], Mapping[str, str]]
                 ) -> None:
        self._security = security
        self._child_env = child_env
        self.served = 0
        self._entered: Any = None
        self.deadline: float | None = None
        """``time.monotonic()`` by which the current step must end (set by the executor): a
        connect is bounded by it, and ``cancel_running`` ends a brokered process past it."""
        self._running: subprocess.Popen[bytes] | None = None
        self._running_lock = threading.Lock()

    def release(self) -> None:
        """Leave the guard block that requests run in (one block spans back-to-back requests).

        Guard mode writes one ``guard.summary`` audit record per block, so one block per burst
        of requests costs what one step costs there; the executor releases it before it does
        anything else (pumping output, signalling, loading results), which must not run as agent
        code.
        """
        entered, self._entered = self._entered, None
        if entered is not None:
            entered.__exit__(None, None, None)

    def handle(self, message: Mapping[str, Any]) -> tuple[dict[str, Any], list[int]]:
        kind = message.get("kind")
        method = getattr(self, f"_do_{kind}", None) if isinstance(kind, str) else None
        self.served += 1
        try:
            if method is None:
                raise ValueError(f"unknown broker request {kind!r}")
            if kind == "env" and isinstance(message.get("name"), str):
                self.release()  # the membership test below is the kernel's, not agent code's
                if message["name"] not in os.environ:
                    # Libraries probe many unset variables; "not set" tells nothing secret, so
                    # it is answered without asking (and without an audit record).
                    return {"op": "resp", "value": None, "error": None}, []
            security = self._security()
            if security is None:
                raise PermissionError("strict mode has no security layer to decide this request")
            if self._entered is None:
                self._entered = security.agent_code()
                self._entered.__enter__()
            value, fds = method(security, message)
            return {"op": "resp", "value": value, "error": None}, fds
        except BaseException as exc:  # noqa: B036 - every failure goes back to agent code
            if isinstance(exc, OSError):
                args: tuple[Any, ...] = (exc.errno, exc.strerror or str(exc))
                if exc.filename is not None:
                    args += (exc.filename,)
                if exc.errno is None:
                    args = (str(exc),)
            else:
                args = (str(exc),)
            name = type(exc).__name__ if isinstance(exc, Exception) else "RuntimeError"
            if name not in _BUILTIN_NAMES:
                name = "PermissionError" if "ermission" in name else "RuntimeError"
                args = (f"{type(exc).__name__}: {exc}",)
            return {"op": "resp", "value": None, "error": (name, args)}, []

    # -- requests -------------------------------------------------------------------------
    def _do_open(self, security: Any, m: Mapping[str, Any]) -> tuple[Any, list[int]]:
        path = _need(m.get("path"), str, "path")
        flags = _need(m.get("flags"), int, "flags")
        mode = _need(m.get("mode", 0o666), int, "mode")
        if not os.path.isabs(path):
            raise ValueError("broker request: open needs an absolute path")
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOCTTY, mode)
        return None, [fd]

    def _do_connect(self, security: Any, m: Mapping[str, Any]) -> tuple[Any, list[int]]:
        host = _need(m.get("host"), str, "host")
        port = _need(m.get("port"), int, "port")
        timeout = m.get("timeout")
        if timeout is not None:
            timeout = float(_need(timeout, (int, float), "timeout"))
        left = None if self.deadline is None else max(0.001, self.deadline - time.monotonic())
        bounded = left if timeout is None else min(timeout, left) if left is not None else timeout
        sock = socket.create_connection((host, port), bounded)
        if bounded != timeout:
            sock.settimeout(timeout)  # the descriptor's blocking mode is what the worker asked
        return None, [sock.detach()]

    def _do_run(self, security: Any, m: Mapping[str, Any]) -> tuple[Any, list[int]]:
        argv = _need(m.get("argv"), list, "argv")
        if not argv or not all(isinstance(a, str) for a in argv):
            raise TypeError("broker request: argv must be a non-empty list of str")
        data = m.get("input")
        if data is not None:
            _need(data, bytes, "input")
        cwd = _need(m.get("cwd"), str, "cwd")
        timeout = m.get("timeout")
        if timeout is not None:
            timeout = float(_need(timeout, (int, float), "timeout"))
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None
                                else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=cwd, env=dict(self._child_env()),
                                start_new_session=True)
        with self._running_lock:
            self._running = proc
        try:
            with proc:
                try:
                    out, err = proc.communicate(data, timeout=timeout)
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    proc.communicate()
                    raise
                except BaseException:
                    _kill_group(proc)
                    raise
        finally:
            with self._running_lock:
                self._running = None
        return {"returncode": proc.returncode, "stdout": out[:MAX_RUN_OUTPUT],
                "stderr": err[:MAX_RUN_OUTPUT]}, []

    def cancel_running(self) -> None:
        """Kill the process group of a brokered process now running (a step's time is up)."""
        with self._running_lock:
            proc = self._running
            if proc is not None and proc.poll() is None:  # not yet reaped: its group id is ours
                _kill_group(proc)

    def _do_env(self, security: Any, m: Mapping[str, Any]) -> tuple[Any, list[int]]:
        name = _need(m.get("name"), str, "name")
        return security.primitives["env"].get(name), []

    def _do_primitive(self, security: Any, m: Mapping[str, Any]) -> tuple[Any, list[int]]:
        name = _need(m.get("name"), str, "name")
        method = _need(m.get("method"), str, "method")
        args = _need(m.get("args", ()), (tuple, list), "args")
        kwargs = _need(m.get("kwargs", {}), dict, "kwargs")
        primitive = security.primitives.get(name)
        if primitive is None or method.startswith("_") or not hasattr(primitive, method):
            raise AttributeError(f"no primitive {name}.{method}")
        return getattr(primitive, method)(*args, **kwargs), []


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_BUILTIN_NAMES = frozenset(
    n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, Exception)
)
