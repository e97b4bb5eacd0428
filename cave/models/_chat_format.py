"""Anthropic-format conversations <-> the Chat Completions API, for ``_openai_compat``.

The conversation stays in the Anthropic format (see ``_protocol``); it is translated at the edge,
for each request: system blocks become one system message, ``tool_use`` blocks become an assistant
message's ``tool_calls`` (function ``python``, arguments ``{"code": ...}``), ``tool_result`` blocks
become ``role: "tool"`` messages, and ``cache_control`` is dropped (these servers have no such
field; some cache the prefix on their own). ``thinking`` blocks are dropped; other non-text blocks
(images, documents) become a one-line placeholder, because most local servers take text only.

Models without tool use (``fenced``) write their code in ```` ```python ```` fences instead. The
reply is parsed with ``parse_fenced_code`` and each block becomes a synthesized ``tool_use`` block
(id ``fenced_<n>``, numbered across the conversation so ids stay unique), so the loop, the audit
log and checkpoints see the same shape from every provider and a conversation can move to another
model. The text block keeps the reply *verbatim*, fences included; translating back, such an
assistant message is that text alone (the model sees exactly what it wrote), and its
``tool_result``s become one user message ("Output of code block 1: ..."), because these models know
no tool role.

Pure translation over dicts and chunks: the HTTP, retries and streaming are ``_openai_compat``'s.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from ._anthropic import tool_calls_from_content
from ._fenced import parse_fenced_code
from ._protocol import PYTHON_TOOL_NAME, ModelReply, ToolCall, Usage

FENCED_ID_PREFIX = "fenced_"

FENCED_INSTRUCTIONS = """\
This endpoint has no tool-calling API. Wherever these instructions say to call the `python` \
tool, write the code in a fenced block that starts with ```python on its own line and ends with \
``` instead. Every ```python block in your reply is run, in order, and you receive the output in \
the next message; then continue. Show code that must not run with another tag (```text). To give \
your final answer, reply with no ```python block."""

_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use",
                 "length": "max_tokens", "content_filter": "refusal"}
"""Chat Completions ``finish_reason`` -> the Messages API ``stop_reason`` the loop records."""
_FENCED_ID = re.compile(rf"^{FENCED_ID_PREFIX}(\d+)$")


# -- translation: Anthropic-format request -> Chat Completions body ---------------------------

def chat_messages(
    system: Sequence[dict[str, Any]] | str, messages: Sequence[dict[str, Any]], *, fenced: bool
) -> list[dict[str, Any]]:
    """The Chat Completions ``messages`` for an Anthropic-format system prompt and history."""
    text = system if isinstance(system, str) else "\n\n".join(
        b.get("text", "") for b in system if b.get("type") == "text")
    if fenced:
        text = f"{text}\n\n{FENCED_INSTRUCTIONS}" if text else FENCED_INSTRUCTIONS
    out: list[dict[str, Any]] = [{"role": "system", "content": text}] if text else []
    numbers: dict[str, int] = {}  # tool_use id -> its position in the last assistant message
    for message in messages:
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        if message.get("role") == "assistant":
            uses = [b for b in blocks if b.get("type") == "tool_use"]
            numbers = {str(b.get("id")): i for i, b in enumerate(uses, 1)}
            out.append(_assistant(blocks, uses, fenced))
        elif fenced:
            out.append({"role": "user", "content": _fenced_user_text(blocks, numbers)})
        else:
            out.extend(_tool_user_messages(blocks, list(numbers)))
            numbers = {}
    return out


def _assistant(blocks: list[dict[str, Any]], uses: list[dict[str, Any]], fenced: bool
               ) -> dict[str, Any]:
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    if fenced:  # code from a fenced reply is in its text already; code from a tool call is not
        for use in uses:
            if not _FENCED_ID.match(str(use.get("id"))):
                text += ("\n\n" if text else "") + _fence(_code_of(use))
        return {"role": "assistant", "content": text}
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if uses:
        message["tool_calls"] = [
            {"id": str(u.get("id")), "type": "function",
             "function": {"name": str(u.get("name")), "arguments": json.dumps(u.get("input", {}))}}
            for u in uses]
    return message


def _tool_user_messages(blocks: list[dict[str, Any]], pending: list[str]) -> list[dict[str, Any]]:
    """Tool messages first (they must follow the assistant's tool_calls), then the user's text.

    A call left without a result (the loop never does that) gets one saying so, since servers
    that check the pairing refuse the whole request otherwise.
    """
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    for block in blocks:
        if block.get("type") == "tool_result":
            out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id")),
                        "content": _result_text(block)})
        elif (text := _block_text(block)) is not None:
            texts.append(text)
    answered = {m["tool_call_id"] for m in out}
    out += [{"role": "tool", "tool_call_id": i, "content": "(no result: the call was not run)"}
            for i in pending if i not in answered]
    if texts:
        out.append({"role": "user", "content": "\n\n".join(texts)})
    return out


def _fenced_user_text(blocks: list[dict[str, Any]], numbers: dict[str, int]) -> str:
    parts: list[str] = []
    for block in blocks:
        if block.get("type") == "tool_result":
            n = numbers.get(str(block.get("tool_use_id")))
            label = f"Output of code block {n}" if n is not None else "Output of an earlier block"
            if block.get("is_error"):
                label += " (error)"
            parts.append(f"{label}:\n{_result_text(block)}")
        elif (text := _block_text(block)) is not None:
            parts.append(text)
    return "\n\n".join(parts)


def _block_text(block: dict[str, Any]) -> str | None:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind in ("thinking", "redacted_thinking"):
        return None
    return f"[A {kind} block was left out: this endpoint is sent text only.]"


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    return "\n".join(t for b in content if (t := _block_text(b)) is not None)


def _code_of(block: dict[str, Any]) -> str:
    data = block.get("input")
    if isinstance(data, dict) and isinstance(data.get("code"), str):
        return data["code"]
    return json.dumps(data)


def _fence(code: str) -> str:
    """``code`` in a python fence longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}python\n{code.rstrip(chr(10))}\n{ticks}"


def chat_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic tool definitions as Chat Completions functions."""
    return [{"type": "function",
             "function": {"name": t["name"], "description": t.get("description", ""),
                          "parameters": t.get("input_schema", {"type": "object"})}}
            for t in tools]


# -- streaming: chunks -> accumulated reply ---------------------------------------------------

class ChunkAccumulator:
    """What the chunks of one streamed completion add up to."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: dict[Any, dict[str, Any]] = {}  # key -> {"id", "name", "args": [str]}
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model = ""
        self._last: Any = None

    def add(self, chunk: dict[str, Any]) -> str:
        """Take one chunk; return its new text."""
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        text = ""
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                text += delta["content"]
            for position, call in enumerate(delta.get("tool_calls") or []):
                self._tool_delta(call, position)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        if text:
            self.text.append(text)
        return text

    def _tool_delta(self, call: dict[str, Any], position: int) -> None:
        key = call.get("index")
        if not isinstance(key, int):  # servers that omit the index: a new id opens a new call
            key = call.get("id") or (self._last if self._last is not None else position)
        slot = self.calls.setdefault(key, {"id": "", "name": "", "args": []})
        self._last = key
        function = call.get("function") or {}
        slot["id"] = slot["id"] or str(call.get("id") or "")
        slot["name"] = slot["name"] or str(function.get("name") or "")
        args = function.get("arguments")
        if isinstance(args, dict):  # a few servers send the object, not its JSON
            args = json.dumps(args)
        if isinstance(args, str):
            slot["args"].append(args)


# -- translation: accumulated reply -> Anthropic-format reply --------------------------------

def chat_reply(acc: ChunkAccumulator, messages: Sequence[dict[str, Any]], body: dict[str, Any],
               *, fenced: bool, model: str) -> tuple[ModelReply, bool]:
    """The reply a streamed completion adds up to, and whether its usage is an estimate.

    ``messages`` is the request's history (fenced ids continue from it), ``body`` the JSON that was
    sent (for the estimate), ``model`` the name to report when the server sends none.
    """
    text = "".join(acc.text)
    stop_reason = _STOP_REASONS.get(acc.finish or "stop", acc.finish or "end_turn")
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    calls: list[ToolCall] = []
    if fenced:
        answer, blocks = parse_fenced_code(text)
        first = _next_fenced_number(messages)
        for n, code in enumerate(blocks, first):
            block_id = f"{FENCED_ID_PREFIX}{n}"
            content.append({"type": "tool_use", "id": block_id, "name": PYTHON_TOOL_NAME,
                            "input": {"code": code}})
            calls.append(ToolCall(block_id, code))
        if blocks and stop_reason == "end_turn":
            stop_reason = "tool_use"
    partial = None
    if not fenced:
        answer = text
        for slot in acc.calls.values():
            block, tool_call = _tool_use(slot, stop_reason)
            content.append(block)
            calls.append(tool_call)
        if stop_reason == "max_tokens" and calls and calls[-1].code is None:
            partial = _unparsed("".join(list(acc.calls.values())[-1]["args"]))  # cut mid-call
    out_chars = len(text) + sum(len(a) for s in acc.calls.values() for a in s["args"])
    usage, estimated = _usage(acc.usage, body, out_chars)
    return ModelReply(text=answer, tool_calls=tuple(calls), usage=usage, stop_reason=stop_reason,
                      content=content, model=acc.model or model,
                      partial_tool_input=partial), estimated


def _tool_use(slot: dict[str, Any], stop_reason: str) -> tuple[dict[str, Any], ToolCall]:
    """The history block and the ToolCall for one streamed tool call (never dropped: see
    ``tool_calls_from_content``). Arguments that are not a JSON object are kept out of the block
    (its ``input`` must be an object) and quoted in the error the model gets back."""
    block_id = re.sub(r"[^A-Za-z0-9_-]", "_", slot["id"]) or "call_" + uuid.uuid4().hex[:24]
    raw = "".join(slot["args"])
    block = {"type": "tool_use", "id": block_id, "name": slot["name"], "input": {}}
    try:
        data = json.loads(raw, strict=False) if raw.strip() else {}  # strict: raw newlines pass
    except ValueError as exc:
        error = (f"The arguments of the {slot['name']!r} call were not valid JSON ({exc}); they "
                 f'began {raw[:120]!r}. Send a JSON object like {{"code": "<python source>"}}.')
        if stop_reason == "max_tokens":
            error += (" The reply was cut off at max_tokens, so the input is incomplete: write "
                      "shorter code, or split it over several calls.")
        return block, ToolCall(block_id, None, error=error)
    [tool_call] = tool_calls_from_content([dict(block, input=data)], stop_reason)
    if isinstance(data, dict):
        block["input"] = data
    return block, tool_call


def _unparsed(raw: str) -> str | None:
    """``raw`` if it is not (yet) JSON: the start of a call that max_tokens cut."""
    try:
        json.loads(raw, strict=False)
    except ValueError:
        return raw
    return None


def _next_fenced_number(messages: Sequence[dict[str, Any]]) -> int:
    """One more than the highest ``fenced_<n>`` id in the history (ids must stay unique)."""
    highest = 0
    for message in messages:
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        for block in content:
            m = _FENCED_ID.match(str(block.get("id", "")))
            if m and block.get("type") == "tool_use":
                highest = max(highest, int(m[1]))
    return highest + 1


def _usage(raw: dict[str, Any] | None, body: dict[str, Any], out_chars: int
           ) -> tuple[Usage, bool]:
    """Usage from the server's final chunk, else an estimate (characters // 4) and True."""
    if raw is None:
        estimate = max(1, len(json.dumps(body)) // 4), max(1, out_chars // 4)
        return Usage(*estimate, cost_usd=None), True
    prompt = int(raw.get("prompt_tokens") or 0)
    details = raw.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    return Usage(max(0, prompt - cached), int(raw.get("completion_tokens") or 0), cached, 0,
                 None), False
