"""``ScriptedModel``: plays a script of canned replies in-process. A test fixture, not a model.

It answers each ``query`` with the next scripted ``Reply`` (or raises for a ``Failure``), in exactly
the shape ``AnthropicModel`` produces (same content blocks, same tool-call parsing), so the agent
loop cannot tell them apart. No HTTP, no sleeping: the agent-loop benchmark uses it to measure the
loop itself. For the real SDK over HTTP, play the same script through ``AnthropicServer``.
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

from .._errors import ConfigError, ModelResponseError, TurnInterrupted
from ..models._anthropic import tool_calls_from_content
from ..models._protocol import ModelReply, ModelRequest, TextSink, Usage
from ._script import (
    Failure,
    Script,
    ScriptPlayer,
    content_blocks,
    estimate_tokens,
    output_chars,
)


class ScriptedModel:
    """A ``cave.models.Model`` that replays ``script``; records every request in ``.requests``."""

    def __init__(self, script: Script, name: str = "scripted", *, chunk_size: int = 16) -> None:
        """``chunk_size``: characters per ``on_text`` call, to exercise streaming display."""
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1, not {chunk_size}.")
        self.name = name
        self.requests: list[ModelRequest] = []
        self._player = ScriptPlayer(script)
        self._chunk = chunk_size
        self._ids = itertools.count(1)
        self._cancelled = threading.Event()

    def __repr__(self) -> str:
        return f"ScriptedModel({self.name!r}, used={self._player.used})"

    def query(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """The next scripted reply; raises ModelResponseError for a scripted Failure."""
        self._cancelled.clear()
        self.requests.append(request)
        body: dict[str, Any] = {
            "model": self.name,
            "system": list(request.system),
            "messages": list(request.messages),
            "tools": list(request.tools),
            "max_tokens": request.max_tokens,
        }
        item = self._player.next(body)
        if item is None:
            raise ConfigError(self._player.exhausted_message(f"ScriptedModel {self.name!r}"))
        if isinstance(item, Failure):
            raise ModelResponseError(item.status, item.error_type, item.message)
        try:
            content = content_blocks(item, lambda: f"toolu_scripted_{next(self._ids)}")
        except ValueError as exc:  # what AnthropicModel reports for the same script item
            raise ModelResponseError(None, "invalid_tool_input",
                                     f"the reply's tool input was not JSON ({exc})") from None
        text = item.text
        for start in range(0, len(text), self._chunk):
            if self._cancelled.is_set():
                raise TurnInterrupted(step=0)
            if on_text is not None:
                on_text(text[start : start + self._chunk])
        if self._cancelled.is_set():
            raise TurnInterrupted(step=0)
        stop_reason = item.effective_stop_reason
        if item.input_tokens is not None:
            input_tokens = item.input_tokens
        else:
            input_tokens = estimate_tokens(len(json.dumps(body, default=str)))
        if item.output_tokens is not None:
            output_tokens = item.output_tokens
        else:
            output_tokens = estimate_tokens(output_chars(item))
        return ModelReply(
            text=text,
            tool_calls=tool_calls_from_content(content, stop_reason),
            usage=Usage(input_tokens, output_tokens, 0, 0, 0.0),
            stop_reason=stop_reason,
            content=content,
            model=self.name,
        )

    def cancel(self) -> None:
        """Make the in-flight ``query`` raise ``TurnInterrupted`` at its next chunk."""
        self._cancelled.set()
