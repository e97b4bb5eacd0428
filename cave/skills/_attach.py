"""Wire skills into a session: the registry, the ``skills`` primitive, the prompt listing."""

from __future__ import annotations

from typing import Any

from ._primitive import Skills, make_ops
from ._registry import SkillRegistry

__all__ = ["attach", "registry_for"]


def registry_for(session: Any) -> SkillRegistry:
    """The session's skills, discovered on first use."""
    registry = getattr(session, "skills", None)
    if registry is None:
        registry = SkillRegistry(session.workspace)
        session.skills = registry
    return registry


def attach(session: Any, security: Any) -> None:
    """Give the session's agent the ``skills`` primitive."""
    registry = registry_for(session)

    def bind(name: str, obj: Any, description: str) -> None:
        session.runtime.inject(name, obj, description)

    security.extend("skills", Skills(security.handle), make_ops(registry, bind))
    session.state_parts["skills"] = (
        lambda: _capture(session), lambda saved: lambda: _apply(session, saved)
    )


def _capture(session: Any) -> dict[str, Any]:
    registry = registry_for(session)
    return {
        "added": [str(p) for p in registry.added],
        "active": list(registry.active),
        "approved": dict(registry.approved),
        "loaded": {k: list(v) for k, v in registry.loaded.items()},
    }


def _apply(session: Any, saved: Any) -> list[Any]:
    """Skills come back active, with their approvals (a changed file still asks again)."""
    from pathlib import Path

    registry = registry_for(session)
    if not saved:
        return []
    registry.added = [Path(p) for p in saved.get("added", [])]
    registry.refresh()
    registry.active = [str(n) for n in saved.get("active", [])]
    registry.approved = {str(k): str(v) for k, v in dict(saved.get("approved", {})).items()}
    registry.loaded = {str(k): list(v) for k, v in dict(saved.get("loaded", {})).items()}
    return []
