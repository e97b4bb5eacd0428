"""The summariser call: the model condenses old turns, in a request of its own.

A separate call (no tools, its own short system prompt), so the summary cannot run code and the
conversation's prompt cache is not disturbed. The transcript it reads is the turns as text, each
piece cut to ``PIECE_CHARS``; with an earlier summary, the model is asked to *update* it with the
turns since, never to summarise its own summary again. Its usage is returned, to be counted in the
turn's totals and budget like any other call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._errors import ModelError
from ..models._protocol import Model, ModelReply, ModelRequest

PIECE_CHARS = 1500
"""Characters kept of each prompt, answer, code block or output in the transcript."""
MAX_SUMMARY_TOKENS = 2000

SYSTEM = """\
You maintain the running summary of a data-analysis session between a user and an agent that \
works in a persistent Python runtime. The runtime keeps every variable; your summary replaces \
the old turns in the agent's context, so it must let the agent carry on without them.
Write plain text, at most about 400 words:
- every variable, function or file the turns created or changed that still matters: its exact \
name, what it holds (type, shape or meaning) and how it was made;
- what the user asked for, what was found (key numbers exactly), decisions and open questions;
- errors that were hit and how they were solved.
Do not invent anything. Do not include code beyond a name or a one-line expression."""


def summary_request(previous: str | None, messages: Sequence[dict[str, Any]]) -> ModelRequest:
    transcript = render(messages)
    if previous:
        task = (f"The summary so far:\n<summary>\n{previous}\n</summary>\n\nThe turns since "
                f"then:\n<turns>\n{transcript}\n</turns>\n\nWrite the updated summary: keep "
                "what still matters from the summary so far and add what the new turns did.")
    else:
        task = (f"The turns to summarise:\n<turns>\n{transcript}\n</turns>\n\nWrite the "
                "summary.")
    return ModelRequest(
        system=[{"type": "text", "text": SYSTEM}],
        messages=[{"role": "user", "content": [{"type": "text", "text": task}]}],
        tools=(),
        max_tokens=MAX_SUMMARY_TOKENS,
    )


def summarise(model: Model, previous: str | None,
              messages: Sequence[dict[str, Any]]) -> tuple[str, ModelReply]:
    """The new summary and the reply (for its usage); ``ModelError`` if it is unusable."""
    reply = model.query(summary_request(previous, messages))
    text = reply.text.strip()
    if not text:
        raise ModelError("the summariser returned an empty summary")
    return text, reply


def render(messages: Sequence[dict[str, Any]]) -> str:
    """The turns as a compact text transcript."""
    lines: list[str] = []
    for message in messages:
        for block in message["content"]:
            kind = block.get("type")
            if kind == "text":
                who = "User" if message["role"] == "user" else "Agent"
                lines.append(f"{who}: {_cut(block['text'])}")
            elif kind == "tool_use":
                code = block.get("input", {}).get("code", "") if isinstance(
                    block.get("input"), dict) else ""
                lines.append(f"Agent ran:\n{_cut(str(code))}")
            elif kind == "tool_result":
                text = "".join(p.get("text", "") for p in block.get("content", [])
                               if isinstance(p, dict))
                label = "Error" if block.get("is_error") else "Output"
                lines.append(f"{label}:\n{_cut(text)}")
    return "\n".join(lines)


def _cut(text: str) -> str:
    if len(text) <= PIECE_CHARS:
        return text
    half = PIECE_CHARS // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half:,} characters ...]\n{text[-half:]}"
