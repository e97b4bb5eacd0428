"""``Security``: the one object a session holds to use the authority layer.

It holds only an opaque handle: the policy, the grants, the approval channel and the audit sink
live in the guard's vault (``_guard``), where agent code cannot reach them by attribute access.
Every method that changes them is refused when called from a thread that is running agent code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .._errors import AuthorityError
from ._audit import AuditSink
from ._grants import Grant
from ._guard import _ask, install
from ._policy import Policy
from ._primitives import Env, Files, Human, Net, Shell, describe

__all__ = ["Security"]


class Security:
    """The authority layer of one session: primitives, guard, policy, grants, audit."""

    def __init__(
        self,
        *,
        workspace: Path,
        policy: Policy,
        channel: Any,
        audit: AuditSink,
        session_dir: Path | None = None,
        protected: Sequence[Path] = (),
        exec_marker: str | None = None,
    ) -> None:
        """Register a session with the process's guard (installing it on first use).

        ``session_dir`` (default ``<workspace>/.cave``), the audit log and ``protected`` are
        denied to agent code whatever the policy says. ``exec_marker``: when set, code objects
        whose file name starts with it (the runtime's name for agent code, e.g. ``"<cave-"``)
        are refused if executed outside ``agent_code()``: a backstop that fails closed.
        """
        install()
        self.workspace = Path(os.path.realpath(workspace))
        session = Path(session_dir) if session_dir is not None else self.workspace / ".cave"
        guarded = [session, *protected]
        for attr in ("path", "head_path"):
            value = getattr(audit, attr, None)
            if isinstance(value, (str, Path)):
                guarded.append(Path(value))
        code = Security.agent_code.__wrapped__.__code__  # type: ignore[attr-defined]
        payload = (
            self.workspace,
            policy,
            channel,
            audit,
            tuple(str(p) for p in guarded),
            exec_marker,
            code,
        )
        self._handle = _ask("register", payload)
        self.primitives: Mapping[str, Any] = MappingProxyType(
            {
                "fs": Files(self._handle),
                "shell": Shell(self._handle),
                "net": Net(self._handle),
                "env": Env(self._handle),
                "human": Human(self._handle),
            }
        )
        """Bind these into the agent's namespace: ``fs``, ``shell``, ``net``, ``env``, ``human``."""

    @classmethod
    def _adopt(cls, handle: object, workspace: Path) -> Security:
        """A facade for a session the vault already holds (a sub-agent's)."""
        self = cls.__new__(cls)
        self.workspace = workspace
        self._handle = handle
        self.primitives = MappingProxyType(
            {
                "fs": Files(handle),
                "shell": Shell(handle),
                "net": Net(handle),
                "env": Env(handle),
                "human": Human(handle),
            }
        )
        return self

    def spawn(self, label: str, policy: Any) -> Security:
        """A sub-agent's authority: ``policy`` met with this session's (``_attenuation``).

        ``policy``: a list of capability patterns (allowed; the rest denied) or a ``Policy``.
        Refused from agent code (agents use the ``agents.spawn`` primitive, which asks)."""
        from ._attenuation import given_policy

        handle = _ask("spawn", (self._handle, label, given_policy(policy, self.workspace)))
        return Security._adopt(handle, self.workspace)

    def extend(self, name: str, primitive: Any, ops: Mapping[str, Any]) -> None:
        """Add a primitive namespace (``skills``, ``agents``): ``primitive`` is the agent-facing
        object (holding only this session's handle), ``ops`` the functions the vault runs for
        ``name.op`` calls, each ``fn(ctx, *args)``. Refused from agent code."""
        _ask("extend", (self._handle, dict(ops)))
        self.primitives = MappingProxyType({**self.primitives, name: primitive})

    @property
    def handle(self) -> object:
        """The opaque handle the primitives carry (useless without the vault)."""
        return self._handle

    def describe_primitives(self) -> str:
        """Signatures and first doc lines of the primitives, for the system prompt."""
        return describe(self.primitives)

    @contextlib.contextmanager
    def agent_code(self) -> Iterator[None]:
        """The guard is on for code run inside this block, in this thread and threads it starts."""
        nonce = _ask("enter", (self._handle,))
        try:
            yield
        finally:
            _ask("exit", (self._handle, nonce))

    @property
    def policy(self) -> Policy:
        """A copy of the session's current policy."""
        policy: Policy = _ask("get_policy", (self._handle,))
        return policy

    def with_policy(self, policy: Policy, *, by: str = "session") -> None:
        """Make ``policy`` the session's policy from now on (audited as ``policy.change``)."""
        if not isinstance(policy, Policy):
            raise TypeError(f"with_policy takes a Policy, not {type(policy).__name__}")
        _ask("set_policy", (self._handle, policy, by))

    @property
    def grants(self) -> tuple[Grant, ...]:
        """The grants from approvals that are still good."""
        grants: tuple[Grant, ...] = _ask("grants", (self._handle,))
        return grants

    def snapshot(self) -> dict[str, Any]:
        """Policy and grants as JSON-able data, for a checkpoint."""
        snap: dict[str, Any] = _ask("snapshot", (self._handle,))
        return snap

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Restore policy and grants from ``snapshot`` (checkpoint restore; already verified)."""
        _ask("restore", (self._handle, dict(snapshot)))

    def cancel_pending(self) -> int:
        """Cancel approval requests that are waiting for a person (the stop button)."""
        return int(_ask("cancel", (self._handle,)))

    def close(self) -> None:
        """Forget this session in the guard; its primitives stop working."""
        try:
            _ask("close", (self._handle,))
        except RuntimeError:
            pass

    def __repr__(self) -> str:
        return f"<Security workspace={str(self.workspace)!r}>"


def _check_installed() -> None:
    try:
        _ask("ping", ())
    except RuntimeError as exc:
        raise AuthorityError(str(exc)) from None
