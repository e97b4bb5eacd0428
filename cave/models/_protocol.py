"""The seam between the agent loop and any model provider.

The conversation is kept in the Anthropic Messages format (a list of ``{"role", "content"}`` dicts
whose content is a list of blocks). It is the richest of the common formats, so other providers
translate *from* it at their edge and the loop never does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

PYTHON_TOOL_NAME = "python"

PYTHON_TOOL: dict[str, Any] = {
    "name": PYTHON_TOOL_NAME,
    "description": "Run Python in your persistent runtime (the system prompt says how).",
    "input_schema": {
        "type": "object",
        "properties": {"code": {"type": "string"}},
        "required": ["code"],
    },
}


@dataclass(frozen=True)
class Usage:
    """Tokens of one model call (or a sum of calls)."""

    input_tokens: int = 0
    """Uncached prompt tokens."""
    output_tokens: int = 0
    cache_read_tokens: int = 0
    """Prompt tokens served from the provider's prompt cache."""
    cache_write_tokens: int = 0
    """Prompt tokens written to the provider's prompt cache."""
    cost_usd: float | None = None
    """Estimated cost, or None when the model's price is unknown."""

    def __add__(self, other: Usage) -> Usage:
        cost: float | None
        if self.cost_usd is None and other.cost_usd is None:
            cost = None
        else:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            cost,
        )


@dataclass(frozen=True)
class ToolCall:
    """One request from the model to run code."""

    id: str
    code: str | None
    """The code to run, or None when the tool input was malformed (see ``error``)."""
    error: str | None = None
    """Why the input could not be used; sent back to the model as an error tool result."""


@dataclass(frozen=True)
class ModelRequest:
    """Everything one model call needs; built by the context builder."""

    system: Sequence[dict[str, Any]]
    """System prompt blocks (``{"type": "text", "text": ..., "cache_control": ...}``)."""
    messages: Sequence[dict[str, Any]]
    tools: Sequence[dict[str, Any]] = (PYTHON_TOOL,)
    max_tokens: int = 8192
    tool_choice: str | None = None
    """``"none"``: the model must answer in text although tools are defined (both APIs accept
    it; a conversation that holds tool calls must still define the tools). None: the default."""


@dataclass(frozen=True)
class ModelReply:
    """One model answer: text, zero or more code calls, and what it cost."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    stop_reason: str
    content: list[dict[str, Any]] = field(default_factory=list)
    """The assistant content blocks to append to the history verbatim."""
    model: str = ""
    calls: int = 1
    """Model calls whose usage this reply adds up (more than one when it was continued or
    rejoined, or a cut reply was asked again): its input tokens are not one request's size."""
    partial_tool_input: str | None = None
    """The raw input JSON streamed for the last tool call when ``max_tokens`` cut the reply in
    the middle of it (the content's block holds only what parsed); ``agent._rejoin`` joins it
    with the model's continuation. None when no call was cut or the provider cannot say."""


TextSink = Callable[[str], None]
"""Receives streamed text as it arrives."""


@runtime_checkable
class Model(Protocol):
    """A model the agent loop can query. Implementations need not inherit this."""

    name: str

    def query(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """Answer one request, streaming text to ``on_text``; raise ``ModelError`` on failure."""
        ...

    def cancel(self) -> None:
        """Abort an in-flight ``query`` from another thread (on interrupt); it then raises."""
        ...
