"""The guard proper: what the vault decides for a raw audit event on a thread running agent code.

A base class of ``_guard._Vault`` (its state is set there), so the vault module holds the
commands and this one the event checks: frame protection, Cave's own code, signals, and the
capability checks against tickets, policy, grants and approvals. Classes hold no vault; only the
hook references the instance.
"""

from __future__ import annotations

import socket
from typing import Any

from ._capabilities import Capability
from ._engine import Permit, SessionAuthority
from ._events import Check, Refusal, classify
from ._policy import HARMLESS_ENV, Effect
from ._vault_state import _Binding, _Session

_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
_FRAME_EVENTS = frozenset({"sys._getframe", "sys._getframemodulename"})
_GUARDED_KILL = frozenset({"os.kill", "os.killpg"})
_SPECIAL = frozenset(
    {"object.__getattr__", "object.__setattr__", "object.__delattr__", "exec", "os.kill"}
)

_EXEC_WITHOUT_ENV = (
    "os.exec* without an environment would hand this process's whole environment to the new "
    "program; use os.execve(path, args, env) with the variables it needs"
)


_ENV_WRITES = frozenset({"os.putenv", "os.unsetenv"})



class _EventGuard:
    """The vault's event checks (a base of ``_guard._Vault``, which sets these fields)."""

    sessions: dict[object, _Session]
    protected_code: list[Any]
    getaddrinfo: Any

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
                refused = self._ask(b, event, check, at_least_ask=True)
                if refused is not None:
                    return refused
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
            refused = self._ask(b, event, check, grant_as=check.grant_as)
            if refused is not None:
                return refused
        return None

    def _ask(self, b: _Binding, event: str, check: Check, **how: Any
             ) -> tuple[type[PermissionError], tuple[str]] | None:
        """Authorize one check (asking if the policy says so); the refusal to raise, or None."""
        authority = b.session.authority
        try:
            permit = authority.authorize(check.capability, origin=f"guard:{event}",
                                         summary=check.summary, details=check.details, **how)
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


    def _env_visible(self, b: _Binding, name: str) -> bool:
        """Readable by agent code without asking: allowed by policy, a session grant, or set by
        the agent itself."""
        if name in b.session.env_set:
            return True
        cap = Capability("env", name)
        authority = b.session.authority
        return authority.allowed_by_policy(cap) or authority.session_grant_covers(cap)


    def _count(self, b: _Binding, event: str) -> None:
        b.counts[event] = b.counts.get(event, 0) + 1



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

