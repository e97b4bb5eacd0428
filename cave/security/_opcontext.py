"""The operation context: what a primitive in ``_ops`` (or an ``extend``-ed op) may do.

Apart from the vault so the vault module stays readable; an ``_OpContext`` is built by the vault
for one call and handed to the operation, which runs inside the vault.
"""

from __future__ import annotations

import contextvars
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ._engine import Permit
from ._events import Check
from ._policy import Policy
from ._vault_state import _Binding, _Session, _Ticket


class _VaultView(Protocol):
    """The part of ``_guard._Vault`` an operation context uses."""

    sessions: dict[object, _Session]
    getaddrinfo: Callable[..., Any]
    start_new_thread: Callable[..., Any]

    def spawn_child(self, parent: _Session, label: str, policy: Policy) -> object: ...


class _OpContext:
    """What an operation in ``_ops`` may do: get a permit, run with a ticket, settle."""

    def __init__(self, vault: _VaultView, b: _Binding, code_line: str | None = None) -> None:
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

