"""``cave.Agent``: a sub-agent of the current session (the machinery is ``cave.subagents``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .models._protocol import Model
from .subagents._agent import SubAgent

__all__ = ["Agent"]


class Agent(SubAgent):
    """``cave.Agent(name, model=, policy=, instructions=)``: a sub-agent with its own namespace,
    conversation and policy, never more authority than the session that makes it.

    ``policy``: a list of capability patterns it may use (everything else is denied), or a
    ``cave.security.Policy``. ``model``: a model name, a ``Model``, or None for the session's.
    ``instructions``: its role, in its system prompt. Then ``ask(prompt)`` (in a notebook cell,
    ``await ask_async(prompt)``), ``inject(name, obj)``, ``retrieve(name)``. Sub-agents made by
    the agent's own ``agents.spawn`` are ``cave.subagents.SubAgent`` objects with the same API.
    """

    def __init__(
        self,
        name: str,
        *,
        model: str | Model | None = None,
        policy: Iterable[str] | Any = None,
        instructions: str = "",
    ) -> None:
        from ._session import current_session

        super().__init__(
            current_session(), name, model=model, policy=policy, instructions=instructions
        )
