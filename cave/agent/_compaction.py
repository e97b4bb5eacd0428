"""Keep the conversation inside a budget: old execution outputs become placeholders.

The runtime is the memory that matters (DESIGN.md): a variable the agent set ten turns ago is
still there, so the text of that turn's outputs can go. Compaction is applied to the *request*,
never to the stored history, so checkpoints and the audit keep everything.

The cut moves a whole turn at a time, so the compacted prefix is stable between steps and the
provider's prompt cache keeps working; only the turns before the cut are touched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

CHARS_PER_TOKEN = 4
"""A rough, provider-neutral estimate; the budget is a safety margin, not an exact count."""

KEEP_RECENT_TURNS = 2
"""Turns (user prompts) at the end of the history that are never compacted."""


def estimate_tokens(messages: Sequence[dict[str, Any]]) -> int:
    return len(json.dumps(messages, ensure_ascii=False)) // CHARS_PER_TOKEN


def placeholder(chars: int) -> str:
    return (
        f"[Output elided to save context ({chars:,} characters). Variables this code set are "
        "still in the runtime: inspect them instead of re-running.]"
    )


def compact(history: Sequence[dict[str, Any]], budget_tokens: int | None) -> list[dict[str, Any]]:
    """``history`` itself if it fits ``budget_tokens``, else a copy with old outputs elided.

    Outputs are elided oldest turn first, stopping as soon as the rest fits; the last
    ``KEEP_RECENT_TURNS`` turns are kept whole even if that leaves the request over budget.
    """
    messages = list(history)
    if budget_tokens is None or estimate_tokens(messages) <= budget_tokens:
        return messages
    starts = [i for i, m in enumerate(messages) if _starts_turn(m)]
    protected_from = starts[-KEEP_RECENT_TURNS] if len(starts) >= KEEP_RECENT_TURNS else 0
    total = estimate_tokens(messages)
    for turn_start, turn_end in zip(starts, [*starts[1:], len(messages)], strict=True):
        if turn_start >= protected_from or total <= budget_tokens:
            break
        for i in range(turn_start, turn_end):
            before = len(json.dumps(messages[i], ensure_ascii=False))
            messages[i] = _elide_outputs(messages[i])
            total -= (before - len(json.dumps(messages[i], ensure_ascii=False))) // CHARS_PER_TOKEN
    return messages


def _starts_turn(message: dict[str, Any]) -> bool:
    """A user message carrying the user's text (not only tool results) opens a turn."""
    if message["role"] != "user":
        return False
    return any(
        b.get("type") == "text" and not b["text"].startswith("[This turn was stopped")
        for b in message["content"]
    )


def _elide_outputs(message: dict[str, Any]) -> dict[str, Any]:
    if message["role"] != "user":
        return message
    content = []
    for block in message["content"]:
        if block.get("type") == "tool_result":
            text = "".join(
                part.get("text", "") for part in block.get("content", []) if isinstance(part, dict)
            )
            if len(text) > len(placeholder(len(text))):
                block = {**block, "content": [{"type": "text", "text": placeholder(len(text))}]}
        content.append(block)
    return {"role": "user", "content": content}
