"""``AnthropicServer``: a loopback fake of the Anthropic Messages API that plays a script.

A test fixture, not a model: every reply comes from a script of canned ``Reply``/``Failure`` items
(see ``_script``). It speaks the wire format closely enough that the unmodified ``anthropic`` SDK
works against it through ``base_url``: ``POST /v1/messages`` streaming (``message_start``,
``ping``, ``content_block_start/delta/stop``, ``message_delta``, ``message_stop``) and not
streaming, ``POST /v1/messages/count_tokens``, the API's error bodies and status codes, and the
``x-api-key`` or ``Authorization: Bearer`` key check. It binds 127.0.0.1 only; the HTTP plumbing
is ``_loopback``'s.

Token counts are estimates (characters of JSON // 4), not a tokenizer. Prompt caching is simulated:
a ``cache_control`` breakpoint (on a tool, system block or message block, or the top-level
``cache_control``, which marks the last block) writes the prompt prefix up to it; a later request
whose prefix matches a written one, at a breakpoint or up to 20 blocks before one, reads it. Not
simulated: the minimum cacheable length (1024+ tokens on the real API), TTL expiry, isolation
between keys.

Run it as a process for notebooks and browser tests::

    python -m cave.testing._anthropic_server --script replies.json [--port N]

prints the base URL on its first stdout line and serves until killed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from ..models._protocol import PYTHON_TOOL_NAME
from ._loopback import (
    LoopbackHandler,
    LoopbackServer,
    RecordedRequest,
    new_id,
    script_parser,
    serve_until_killed,
    server_options,
)
from ._script import (
    Reply,
    Script,
    estimate_tokens,
    load_script,
    output_chars,
    parse_tool_input,
    scripted_signature,
    tool_use_blocks,
)

__all__ = ["AnthropicServer", "CacheUsage", "PromptCache", "RecordedRequest", "main"]


@dataclass(frozen=True)
class CacheUsage:
    input_tokens: int
    cache_read: int
    cache_write: int
    ttl: str


class PromptCache:
    """Which prompt prefixes earlier requests wrote to the (simulated) cache."""

    LOOKBACK = 20

    def __init__(self) -> None:
        self._written: set[bytes] = set()
        self._lock = threading.Lock()

    def account(self, body: dict[str, Any], total_tokens: int) -> CacheUsage:
        """Split ``total_tokens`` into uncached, cache-read and cache-write tokens, and record."""
        hashes, ends, breakpoints, ttl = _prefixes(body)
        if not breakpoints:
            return CacheUsage(total_tokens, 0, 0, "5m")
        with self._lock:
            hit = -1
            for b in breakpoints:
                for j in range(b, max(-1, b - self.LOOKBACK), -1):
                    if hashes[j] in self._written:
                        hit = max(hit, j)
                        break
            self._written.update(hashes[b] for b in breakpoints)
        last = breakpoints[-1]
        read_chars = ends[hit] if hit >= 0 else 0
        write_chars = ends[last] - read_chars if last > hit else 0
        read = min(read_chars // 4, total_tokens)
        write = min(write_chars // 4, total_tokens - read)
        return CacheUsage(total_tokens - read - write, read, write, ttl)


def _prefixes(body: dict[str, Any]) -> tuple[list[bytes], list[int], list[int], str]:
    """Per prompt block, in the API's order (tools, system, messages): prefix hash and end offset;
    plus the indices of the blocks that carry a cache breakpoint and the last breakpoint's TTL."""
    blocks: list[tuple[str, Any]] = [("tool", t) for t in body.get("tools") or []]
    system = body.get("system")
    if isinstance(system, str):
        system = [{"type": "text", "text": system}]
    blocks += [("system", b) for b in system or []]
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        role = str(message.get("role")) if isinstance(message, dict) else "?"
        blocks += [(role, b) for b in content or []]
    h = hashlib.sha256(str(body.get("model")).encode()).digest()
    hashes: list[bytes] = []
    ends: list[int] = []
    breakpoints: list[int] = []
    ttl, chars = "5m", 0
    for i, (kind, block) in enumerate(blocks):
        marker = block.get("cache_control") if isinstance(block, dict) else None
        if isinstance(block, dict):
            block = {k: v for k, v in block.items() if k != "cache_control"}
        text = json.dumps([kind, block], sort_keys=True, default=str)
        h = hashlib.sha256(h + text.encode()).digest()
        chars += len(text)
        hashes.append(h)
        ends.append(chars)
        if marker:
            breakpoints.append(i)
            ttl = marker.get("ttl", "5m") if isinstance(marker, dict) else "5m"
    top = body.get("cache_control")
    if top and blocks and (not breakpoints or breakpoints[-1] != len(blocks) - 1):
        breakpoints.append(len(blocks) - 1)
        ttl = top.get("ttl", "5m") if isinstance(top, dict) else "5m"
    return hashes, ends, breakpoints, ttl


class _MessagesHandler(LoopbackHandler):
    """``POST /v1/messages`` (streaming or not) and ``POST /v1/messages/count_tokens``."""

    key_error = ("authentication_error", "invalid x-api-key", None)
    script_error_type = "api_error"

    def route(self, method: str, path: str, body: Any) -> None:
        app = cast("AnthropicServer", self.server.app)
        if method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            return self.send_api_error(
                404, "not_found_error", f"{method} {path} is not served here (only POST "
                "/v1/messages).")
        problem = _validate(body, needs_max_tokens=path == "/v1/messages")
        if problem is None and not app.prefill and body["messages"][-1].get("role") == "assistant":
            problem = ("This model does not support assistant message prefill. The conversation "
                       "must end with a user message.")
        if problem is not None:
            return self.send_api_error(400, "invalid_request_error", problem)
        if path.endswith("count_tokens"):
            app.count_calls += 1
            return self.send_json(200, {"input_tokens": estimate_tokens(len(json.dumps(body)))})
        window = app.context_window
        if window is not None and (used := estimate_tokens(len(json.dumps(body)))) > window:
            return self.send_api_error(400, "invalid_request_error",
                                       f"prompt is too long: {used} tokens > {window} maximum")
        item = self.script_item(body)
        if item is None:
            return None
        message, blocks = app._message(body, item)
        if body.get("stream"):
            self.send_events(
                (None if data is None else f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                 for name, data in app._events(message, blocks)), item)
        else:
            self.send_json(200, message)
        return None

    def error_body(self, error_type: str, message: str, code: str | None) -> dict[str, Any]:
        return {"type": "error", "error": {"type": error_type, "message": message},
                "request_id": new_id("req_")}


class AnthropicServer(LoopbackServer):
    """Serves a script as the Anthropic Messages API on 127.0.0.1 (a test fixture, not a model).

    ``chunk_size``: characters per text/input delta. ``latency``: seconds slept before each delta
    (for interrupt tests). ``api_key``: if set, requests with another key get 401. ``port``: 0 picks
    a free one. ``context_window``: if set, a request estimated above it gets the API's 400
    "prompt is too long" (before a script item is used). ``prefill=False`` refuses a request that
    ends with an assistant message, as Claude 4.6 and later do.
    """

    handler_class = _MessagesHandler
    thread_name = "cave-anthropic-server"

    def __init__(
        self,
        script: Script,
        *,
        chunk_size: int = 16,
        latency: float = 0.0,
        api_key: str | None = None,
        port: int = 0,
        context_window: int | None = None,
        prefill: bool = True,
    ) -> None:
        super().__init__(script, chunk_size=chunk_size, latency=latency, api_key=api_key,
                         port=port)
        self.prefill = prefill
        self._cache = PromptCache()
        self.context_window = context_window
        self.count_calls = 0
        """How many ``/v1/messages/count_tokens`` requests were answered."""

    # -- the API ---------------------------------------------------------------------------------

    def _message(self, body: dict[str, Any], item: Reply) -> tuple[dict[str, Any], list[Any]]:
        """The Message (content filled in) and its blocks as (kind, block, streamed string)."""
        if item.input_tokens is not None:
            total = item.input_tokens
        else:
            total = estimate_tokens(len(json.dumps(body, default=str)))
        cache = self._cache.account(body, total)
        output_tokens = (item.output_tokens if item.output_tokens is not None
                         else estimate_tokens(output_chars(item)))
        usage = {
            "input_tokens": cache.input_tokens,
            "cache_creation_input_tokens": cache.cache_write,
            "cache_read_input_tokens": cache.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache.cache_write if cache.ttl != "1h" else 0,
                "ephemeral_1h_input_tokens": cache.cache_write if cache.ttl == "1h" else 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        blocks: list[tuple[str, dict[str, Any], str]] = []
        if item.thinking:
            blocks.append(("thinking", {"type": "thinking", "thinking": item.thinking,
                                        "signature": scripted_signature(item.thinking)},
                           item.thinking))
        if item.text:
            blocks.append(("text", {"type": "text", "text": item.text}, item.text))
        for block_id, raw in tool_use_blocks(item, lambda: new_id("toolu_")):
            try:
                data: Any = parse_tool_input(raw)
            except ValueError:
                data = raw  # not JSON: only a stream can carry it as such; whole-message gets text
            blocks.append(("tool_use", {"type": "tool_use", "id": block_id,
                                        "name": PYTHON_TOOL_NAME, "input": data}, raw))
        message = {
            "id": new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [block for _, block, _ in blocks],
            "stop_reason": item.effective_stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        return message, blocks

    def _events(self, message: dict[str, Any], blocks: list[Any]) -> Iterator[tuple[str, Any]]:
        """The SSE events of a streamed reply, in the API's order; ``None`` marks a pause point."""
        usage = message["usage"]
        start = dict(message, content=[], stop_reason=None, stop_sequence=None,
                     usage=dict(usage, output_tokens=min(usage["output_tokens"], 1)))
        yield "message_start", {"type": "message_start", "message": start}
        yield "ping", {"type": "ping"}
        n = self.chunk_size
        for index, (kind, block, streamed) in enumerate(blocks):
            first: dict[str, Any]
            if kind == "text":
                first, delta_type, field = {"type": "text", "text": ""}, "text_delta", "text"
            elif kind == "thinking":
                first = {"type": "thinking", "thinking": "", "signature": ""}
                delta_type, field = "thinking_delta", "thinking"
            else:
                first = dict(block, input={})
                delta_type, field = "input_json_delta", "partial_json"
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": first}
            pieces = [streamed[i : i + n] for i in range(0, len(streamed), n)]
            if kind == "tool_use":
                pieces.insert(0, "")  # the API opens every tool input with an empty delta
            for piece in pieces:
                yield "", None
                yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": delta_type, field: piece}}
            if kind == "thinking":
                yield "content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": block["signature"]}}
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
        yield "message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens",
                                            "cache_read_input_tokens", "output_tokens")},
        }
        yield "message_stop", {"type": "message_stop"}


def _validate(body: Any, needs_max_tokens: bool = True) -> str | None:
    """The API's 400 message for a request body it would refuse, or None."""
    if not isinstance(body, dict):
        return "The request body is not valid JSON: send a JSON object."
    for name in ("model", "messages") + (("max_tokens",) if needs_max_tokens else ()):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str):
        return "model: Input should be a valid string"
    if not isinstance(body["messages"], list):
        return "messages: Input should be a valid list"
    if not body["messages"]:
        return "messages: at least one message is required"
    if needs_max_tokens and (not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1):
        return "max_tokens: Input should be a positive integer"
    last = len(body["messages"]) - 1
    for i, message in enumerate(body["messages"]):
        content = message.get("content") if isinstance(message, dict) else None
        if not content and not (i == last and message.get("role") == "assistant"):
            return (f"messages.{i}: all messages must have non-empty content except for the "
                    "optional final assistant message")
    return _validate_tools(body)


def _validate_tools(body: dict[str, Any]) -> str | None:
    """The API's rules for tool blocks: each ``tool_use`` is answered by a ``tool_result`` in
    the next message (so a partial call can never be sent back to be continued), and
    ``tool_choice`` is one of its known types."""
    choice = body.get("tool_choice")
    if choice is not None and (not isinstance(choice, dict) or choice.get("type") not in
                               ("auto", "any", "tool", "none")):
        return "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', " \
               "'tool', 'none'"
    messages = body["messages"]
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        ids = [b.get("id") for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
        if not ids:
            continue
        following = messages[i + 1].get("content") if i + 1 < len(messages) else None
        answered = {b.get("tool_use_id") for b in following or [] if isinstance(b, dict)
                    and b.get("type") == "tool_result"} if isinstance(following, list) else set()
        missing = [x for x in ids if x not in answered]
        if missing:
            return (f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(map(str, missing))}. Each `tool_use` block "
                    "must have a corresponding `tool_result` block in the next message.")
    return None


def main(argv: list[str] | None = None) -> int:
    """Serve a script file until killed; the first stdout line is the base URL."""
    parser = script_parser(
        "python -m cave.testing._anthropic_server",
        "Loopback Anthropic Messages API that plays a script of canned replies "
        "(a test fixture, not a model).",
    )
    args = parser.parse_args(argv)
    return serve_until_killed(AnthropicServer(load_script(args.script), **server_options(args)))


if __name__ == "__main__":
    sys.exit(main())
