"""What a turn reports while it runs; the kernel renders these, tests assert on them.

Events are plain frozen dataclasses so a sink can be a list's ``append``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..models._protocol import Usage


@dataclass(frozen=True)
class TextDelta:
    """A piece of the model's text, as it streams."""

    step: int
    text: str


@dataclass(frozen=True)
class ModelCalled:
    """One model call finished."""

    step: int
    model: str
    usage: Usage
    duration_s: float


@dataclass(frozen=True)
class CodeStarted:
    step: int
    code: str


@dataclass(frozen=True)
class CodeFinished:
    step: int
    code: str
    result: Any
    """The runtime's ``ExecutionResult``; its ``for_model()`` is what the model sees."""


@dataclass(frozen=True)
class ToolInputRejected:
    """The model asked to run code but its tool input was unusable; it is told why."""

    step: int
    error: str


@dataclass(frozen=True)
class Notice:
    """One line for the cell: a retry, a compaction, a continued reply, a refusal."""

    step: int
    text: str


@dataclass(frozen=True)
class TurnFinished:
    """The turn is over: with an answer, or stopped (``stopped`` says why)."""

    answer: str
    steps: int
    usage: Usage
    duration_s: float
    model: str
    stopped: str | None = None
    by_agent: tuple[tuple[str, Usage], ...] = ()
    """Usage of sub-agents this turn's code asked (already included in ``usage``)."""
    session: str = ""
    """The session's running totals against its budget (``_budget.footer``); empty outside one."""


Event = (TextDelta | ModelCalled | CodeStarted | CodeFinished | ToolInputRejected | Notice
         | TurnFinished)
EventSink = Callable[[Event], None]
