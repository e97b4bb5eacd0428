"""The forwarders that replace patched C functions, and the patching itself.

They exist apart from the vault because they hold no state and no reference to it: each one only
emits a ``cave.security`` audit event (``_ask``) that the guard's hook answers. ``_guard.install``
calls ``_patch`` once, after the vault has kept the originals.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from ._environ import install_environ

__all__ = ["EVENT"]

EVENT = "cave.security"
"""The audit event Cave code uses to talk to the vault."""


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
