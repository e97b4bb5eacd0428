"""Values held as bytes that only agent code may load (strict mode's ``WorkerValue``).

A type the strict-mode layer and the runtime share, so it lives in the lower one. The bytes were
written by confined agent code and can run any code when loaded, so nothing loads them outside
agent code: ``AgentRuntime.run`` loads them at the start of an in-process (guard-mode) step,
inside the caller's agent-code block, where the agent's own code is about to run with the same
authority.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoadsAsAgentCode"]


class LoadsAsAgentCode:
    """Base of a held value; ``load`` returns the live object (running what the bytes name)."""

    __slots__ = ()

    def load(self, namespace: dict[str, Any]) -> Any:
        raise NotImplementedError
