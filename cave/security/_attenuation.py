"""Attenuated authority for sub-agents: a child never holds what its parent does not.

A sub-agent's authority is the *intersection* of what it was given and what its parent holds,
computed per concrete capability at the moment of use (glob patterns are never intersected
symbolically; a request is a concrete ``kind:resource`` and is checked against both sides):

1. **deny** if the parent would deny it (a protected path, a parent ``deny`` rule, or, for a
   parent that is itself a sub-agent, anything its own intersection denies), or the child's
   own policy denies it. No grant and no approval can override this.
2. **allow** if the child holds a grant for it (a person approved *this child's* ask, or the
   user approved a skill's capabilities for it). A grant is only ever issued for a capability
   that step 1 did not deny.
3. **allow** if the parent *holds* it (its policy allows it, or one of its ``session`` grants
   covers it: a parent's authority includes its session grants; its ``once`` grants are its
   own and do not pass down) **and** the child's policy allows it.
4. otherwise **ask**: a person decides in the same approval queue, the request labelled with
   the child's name (``[name] ...`` in the summary, ``agent`` in the details).

So ``fs.write:out/**`` given under a parent that holds only ``fs.write:out/a/**`` (and denies
the rest) allows exactly ``out/a/**``: a write to ``out/b/x`` is denied by step 1.

A policy given as a list of capability patterns means "these are allowed, everything else is
denied" (plus reading the Python installation, so imports work); a ``Policy`` object is used
as it is. The child's policy is fixed when it is made: nothing the child's code can reach
changes it (``set_policy`` is a privileged vault operation, refused from agent code), and a
grandchild is attenuated against the child, so spawning cannot widen anything.

Not enforced here: what a person approves. A person can approve a child's ask that the parent
would itself have had to ask for; that is a human decision, recorded in the audit log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._capabilities import Capability, parse_capability
from ._engine import Permit, SessionAuthority
from ._grants import SESSION
from ._policy import Effect, Policy, Rule, python_dirs

__all__ = ["ChildAuthority", "held", "given_policy"]


def given_policy(given: Policy | Iterable[str] | None, workspace: Path) -> Policy:
    """The child's own policy: a ``Policy`` as is, or an allow-list of capability patterns."""
    if isinstance(given, Policy):
        return given
    if isinstance(given, str):
        raise TypeError(
            "policy= takes a list of capability patterns, e.g. ['fs.read:data/**'], "
            "or a cave.security.Policy; not a single string"
        )
    rules: list[Rule] = []
    for text in given or ():
        text = str(text).strip()
        parse_capability(text)  # ValueError naming the fix
        rules.append(Rule(text, Effect.ALLOW, "given"))
    imports = "sub-agent default (the Python installation, read-only, so imports work)"
    rules += [Rule(f"fs.read:{p}/**", Effect.ALLOW, imports) for p in python_dirs()]
    return Policy(workspace, tuple(rules), Effect.DENY)


def held(authority: SessionAuthority, capability: Capability) -> Effect:
    """What ``authority`` holds for ``capability``: DENY, ALLOW (policy or session grant), ASK."""
    if isinstance(authority, ChildAuthority):
        return authority.holds(capability)
    if authority._protected(capability) is not None:
        return Effect.DENY
    effect = authority.policy.decide(capability).effect
    if effect is not Effect.ASK:
        return effect
    for grant in authority.grants():
        if grant.scope == SESSION and grant.covers(capability):
            return Effect.ALLOW
    return Effect.ASK


class ChildAuthority(SessionAuthority):
    """A sub-agent's decisions: its own policy and grants, met with its parent's (see above)."""

    def __init__(self, *, parent: SessionAuthority, label: str, policy: Policy) -> None:
        super().__init__(
            workspace=parent.workspace,
            policy=policy,
            channel=parent.channel,
            audit=parent.audit,
            protected=parent.protected,
            start_thread=parent._start_thread,
        )
        self.parent = parent
        self.label = label

    def _own_grant(self, capability: Capability) -> bool:
        with self._lock:
            return self._grants.find(capability) is not None

    def holds(self, capability: Capability) -> Effect:
        """The intersection, without asking anyone (steps 1-4 of the module doc)."""
        parent = held(self.parent, capability)
        if parent is Effect.DENY or self._protected(capability) is not None:
            return Effect.DENY
        mine = self._policy.decide(capability).effect
        if mine is Effect.DENY:
            return Effect.DENY
        if self._own_grant(capability):
            return Effect.ALLOW
        if mine is Effect.ALLOW and parent is Effect.ALLOW:
            return Effect.ALLOW
        return Effect.ASK

    def allowed_by_policy(self, capability: Capability) -> bool:
        if self._protected(capability) is not None:
            return False
        return (
            self._policy.decide(capability).effect is Effect.ALLOW
            and held(self.parent, capability) is Effect.ALLOW
        )

    def is_denied(self, capability: Capability) -> bool:
        return super().is_denied(capability) or held(self.parent, capability) is Effect.DENY

    def authorize(
        self,
        capability: Capability,
        *,
        origin: str,
        summary: str,
        details: Mapping[str, Any] | None = None,
        code_line: str | None = None,
        grant_as: str | None = None,
        at_least_ask: bool = False,
    ) -> Permit:
        if held(self.parent, capability) is Effect.DENY:
            self._record_denial(
                capability, origin, f"[{self.label}] {summary}", "its parent may not"
            )
            raise PermissionError(
                f"{origin}: {capability} is denied: sub-agent {self.label!r} can never do what "
                "its parent cannot. Do not retry; report what you needed."
            )
        if (
            not self.is_denied(capability)
            and not self._own_grant(capability)
            and self._policy.decide(capability).effect is Effect.ALLOW
            and held(self.parent, capability) is not Effect.ALLOW
        ):
            # Allowed by the child's policy but not held by the parent: a person decides.
            verdict = self._policy.decide(capability)
            return self._ask(
                capability,
                type(verdict)(Effect.ASK, None),
                origin,
                f"[{self.label}] {summary}",
                {**(details or {}), "agent": self.label},
                code_line,
                grant_as,
            )
        return super().authorize(
            capability,
            origin=origin,
            summary=f"[{self.label}] {summary}",
            details={**(details or {}), "agent": self.label},
            code_line=code_line,
            grant_as=grant_as,
            at_least_ask=at_least_ask,
        )
