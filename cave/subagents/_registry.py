"""The sub-agents of one session: by name and by vault handle, and what making one needs.

Kept free of imports from the rest of the package (``_agent`` and ``_primitive`` use it), so the
import graph has no cycle: the session hands in how to build a model and how to give a new
sub-agent its own ``agents`` primitive when it attaches (``_primitive.attach``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SubAgents", "attached", "registry_for"]

_attached: list[SubAgents] = []


class SubAgents:
    """Every sub-agent of a session, by name and by vault handle."""

    def __init__(self) -> None:
        self._by_name: dict[str, Any] = {}
        self._by_handle: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.build_model: Callable[[str], Any] = _no_models
        """Model name -> Model, with the session's settings (set when the session attaches)."""
        self.extend_child: Callable[[Any], None] = lambda child: None
        """Give a new sub-agent's ``Security`` the ``agents`` primitive (set on attach)."""

    def add(self, agent: Any) -> None:
        with self._lock:
            self._by_name[agent.name] = agent
            self._by_handle[id(agent._handle)] = agent

    def get(self, name: str) -> Any:
        return self._by_name.get(name)

    def by_handle(self, handle: object) -> Any:
        return self._by_handle.get(id(handle))

    def all(self) -> list[Any]:
        with self._lock:
            return list(self._by_name.values())

    def clear(self) -> None:
        with self._lock:
            self._by_name.clear()
            self._by_handle.clear()

    def cancel_all(self) -> int:
        """The stop button: stop every running sub-agent turn (the whole tree)."""
        n = 0
        for agent in self.all():
            if agent._loop is not None:
                agent.cancel()
                n += 1
        return n


def _no_models(name: str) -> Any:
    from .._errors import ConfigError

    raise ConfigError(
        f"model={name!r} needs a session that builds models; pass a Model object instead"
    )


def registry_for(session: Any) -> SubAgents:
    registry = getattr(session, "subagents", None)
    if registry is None:
        registry = SubAgents()
        session.subagents = registry
    return registry


def set_attached(registry: SubAgents) -> None:
    """The registry of the session that attached last (the process's session)."""
    _attached[:] = [registry]


def attached() -> SubAgents | None:
    return _attached[0] if _attached else None
