"""The ``agents`` primitive (``agents.spawn``) and the vault operations behind sub-agents.

``agents.spawn(name, policy=[...], instructions="")`` asks a person (capability
``tool:agents.spawn:NAME``; the request shows the policy asked for) and returns a sub-agent
whose authority is attenuated against the *calling* agent's: a sub-agent that spawns gets a
grandchild bounded by its own authority, never by the session's.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from ..models._protocol import ModelRequest
from ..security._capabilities import Capability
from ..security._primitives import _call, _Primitive, _text
from ._agent import SubAgent, _check_name, plain
from ._checkpoint import apply_subagents, capture_subagents
from ._registry import registry_for, set_attached

__all__ = ["Agents", "attach", "make_ops"]


class Agents(_Primitive):
    """Sub-agents: helpers with their own namespace, conversation and narrower authority."""

    __slots__ = ()

    def spawn(self, name: str, *, policy: list[str] | None = None, instructions: str = "") -> Any:
        """Create a sub-agent (asks the user) that may do only what `policy` lists and you hold;
        use .ask(prompt), .inject(name, obj), .retrieve(name)."""
        given = [_text(p, "policy item") for p in (policy or [])]
        args = (_text(name, "name"), given, _text(instructions, "instructions"))
        return _call(self._handle, "agents.spawn", args)


def make_ops(session: Any) -> dict[str, Any]:
    """The vault operations behind ``Agents``, sub-agent model calls and audit records."""
    registry = registry_for(session)

    def query(ctx: Any, handle: object, data: Any) -> Any:
        if not ctx.owns(handle):
            raise PermissionError("agents.query: not a sub-agent of this agent")
        agent = registry.by_handle(handle)
        if agent is None:
            raise PermissionError("agents.query: unknown sub-agent")
        data = plain(data)
        request = ModelRequest(
            system=data["system"], messages=data["messages"], tools=data["tools"],
            max_tokens=int(data["max_tokens"]),
        )
        model = agent._model
        return ctx.aside(lambda: model.query(request), model.cancel)

    def spawn(ctx: Any, name: str, given: list[str], instructions: str) -> Any:
        from ..security._attenuation import given_policy
        from ..security._facade import Security

        _check_name(name, registry)
        policy = given_policy(plain(given), ctx.workspace)  # validates each pattern
        permit = ctx.authority.authorize(
            Capability("tool", f"agents.spawn:{name}"),
            origin="agents.spawn",
            summary=f"create sub-agent {name!r} allowed only: {', '.join(given) or 'nothing'} "
            "(and never more than its creator)",
            details={"agent": name, "policy": list(given), "instructions": instructions[:2000]},
            code_line=ctx.code_line,
        )
        ctx.authority.settle(permit, ok=True)
        handle = ctx.spawn(name, policy, make_ops(session))
        child = Security._adopt(handle, ctx.workspace)
        child.primitives = MappingProxyType({**child.primitives, "agents": Agents(handle)})
        return SubAgent._spawned(session, name, child, ctx.handle, None, instructions, given)

    def audit(ctx: Any, handle: object, kind: str, fields: Any) -> None:
        agent = registry.by_handle(handle) if ctx.owns(handle) else None
        if agent is None:
            raise PermissionError("agents.audit: not a sub-agent of this agent")
        ctx.authority.record(f"subagent.{str(kind)[:40]}", agent=agent.name, **plain(fields))

    return {"agents.query": query, "agents.spawn": spawn, "agents.audit": audit}


def attach(session: Any, security: Any, build_model: Callable[[str], Any]) -> None:
    """Give the session's agent the ``agents`` primitive; sub-agents made later get it too."""
    registry = registry_for(session)
    registry.build_model = build_model

    def extend_child(child: Any) -> None:
        child.extend("agents", Agents(child.handle), make_ops(session))

    registry.extend_child = extend_child
    set_attached(registry)
    security.extend("agents", Agents(security.handle), make_ops(session))
    session.state_parts["subagents"] = (
        lambda: capture_subagents(session), lambda saved: lambda: apply_subagents(session, saved)
    )
