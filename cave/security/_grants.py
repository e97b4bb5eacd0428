"""Grants: what a person approved. Created only by the decision engine (no public constructor).

A grant names one exact capability (``fs.write:/tmp/out.csv``), or a subtree for a recursive
delete (``fs.delete:/tmp/build/**``), and a scope:

* ``once``: good for one operation, consumed only when that operation *succeeds* (a failed
  write can be retried without asking again). A raw side effect caught by the guard cannot
  report success, so there the grant is consumed when the effect is allowed.
* ``session``: good until the session ends (or the grants are restored from a checkpoint).

Grants never override a ``deny`` rule.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from ._capabilities import Capability

__all__ = ["Grant", "GrantBook"]

ONCE, SESSION = "once", "session"


class _NoPublicConstructor(type):
    """Calling the class raises; the engine uses ``_create`` (after trio's NoPublicConstructor)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            f"{cls.__qualname__} has no public constructor: grants come only from approvals "
            "(the policy engine creates them)."
        )

    def _create(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **kwargs)


@dataclass(frozen=True)
class Grant(metaclass=_NoPublicConstructor):
    """One approval that is still good."""

    id: str
    capability: str
    """``kind:resource``; a resource ending in ``/**`` covers that directory and below."""
    scope: str
    """``once`` or ``session``."""
    granted_at: float
    request_id: str | None
    """The approval request it came from (None for one restored from an old snapshot)."""

    def covers(self, capability: Capability) -> bool:
        kind, _, resource = self.capability.partition(":")
        if kind != capability.kind:
            return False
        if resource.endswith("/**"):
            root = resource[:-3]
            return capability.resource == root or capability.resource.startswith(root + "/")
        return resource == capability.resource

    def copy(self) -> Grant:
        """An equal grant that shares nothing with this one (what callers outside get)."""
        grant: Grant = Grant._create(
            self.id, self.capability, self.scope, self.granted_at, self.request_id
        )
        return grant

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "capability": self.capability,
            "scope": self.scope,
            "granted_at": self.granted_at,
            "request_id": self.request_id,
        }


class GrantBook:
    """The grants of one session. Not thread-safe by itself: the engine holds a lock."""

    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}

    def add(self, capability: str, scope: str, request_id: str | None) -> Grant:
        if scope not in (ONCE, SESSION):
            raise ValueError(f"grant scope must be once or session, not {scope!r}")
        grant: Grant = Grant._create(
            uuid.uuid4().hex[:12], capability, scope, time.time(), request_id
        )
        self._grants[grant.id] = grant
        return grant

    def find(self, capability: Capability) -> Grant | None:
        """A session grant first (it costs nothing to use), else a once grant."""
        once: Grant | None = None
        for grant in self._grants.values():
            if grant.covers(capability):
                if grant.scope == SESSION:
                    return grant
                once = once or grant
        return once

    def consume(self, grant: Grant) -> bool:
        """Use up a once grant (True if it was still there); session grants stay."""
        if grant.scope != ONCE:
            return False
        return self._grants.pop(grant.id, None) is not None

    def put_back(self, grant: Grant) -> None:
        """Return a once grant that was taken for an operation that then failed."""
        self._grants[grant.id] = grant

    def revoke(self, grant_id: str) -> bool:
        return self._grants.pop(grant_id, None) is not None

    def all(self) -> tuple[Grant, ...]:
        return tuple(self._grants.values())

    def snapshot(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in self._grants.values()]

    def restore(self, items: Iterable[Mapping[str, Any]]) -> None:
        """Replace every grant with the snapshot's (checkpoint restore; the caller checked it)."""
        grants: dict[str, Grant] = {}
        for item in items:
            scope = str(item["scope"])
            if scope not in (ONCE, SESSION):
                raise ValueError(f"grant scope must be once or session, not {scope!r}")
            grant: Grant = Grant._create(
                str(item["id"]),
                str(item["capability"]),
                scope,
                float(item["granted_at"]),
                item.get("request_id"),
            )
            grants[grant.id] = grant
        self._grants = grants
