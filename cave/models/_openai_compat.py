"""OpenAI-compatible provider: the Chat Completions API over ``httpx`` (Ollama, vLLM, llama.cpp
server, LM Studio, and OpenAI itself).

The conversation stays in the Anthropic format (see ``_protocol``); this module translates it at
the edge, for each request: system blocks become one system message, ``tool_use`` blocks become an
assistant message's ``tool_calls`` (function ``python``, arguments ``{"code": ...}``),
``tool_result`` blocks become ``role: "tool"`` messages, and ``cache_control`` is dropped (these
servers have no such field; some cache the prefix on their own). ``thinking`` blocks are dropped;
other non-text blocks (images, documents) become a one-line placeholder, because most local
servers take text only.

Models without tool use (``tools=False``) write their code in ```` ```python ```` fences instead.
The reply is parsed with ``parse_fenced_code`` and each block becomes a synthesized ``tool_use``
block (id ``fenced_<n>``, numbered across the conversation so ids stay unique), so the loop, the
audit log and checkpoints see the same shape from every provider and a conversation can move to
another model. The text block keeps the reply *verbatim*, fences included; translating back, such
an assistant message is that text alone (the model sees exactly what it wrote), and its
``tool_result``s become one user message ("Output of code block 1: ..."), because these models know
no tool role. While streaming, the run blocks are held back from ``on_text`` (they are shown again
as code by the loop's events); a block that never closes is released at the end, as prose.

Streaming, retries and interrupts: the HTTP call runs in a worker thread relayed to the caller's
thread (``on_text`` runs there), as in ``_anthropic``: see ``_streaming``. ``cancel()`` wakes
``query`` at once and shuts the socket down; a retry back-off is an ``Event.wait``, so it ends at
once too; only a connect in progress is left to finish in the (daemon) worker. 429, 408 and 5xx
answers and refused connections are retried ``max_retries`` times (``retry-after-ms``/
``retry-after`` honoured up to 20 s; otherwise 0.5 s, 1 s, 2 s ... up to 8 s), never a stream that
broke after it began: its text was shown.

Usage comes from the final chunk (``stream_options.include_usage``). A server that does not send
it gets an *estimate* (characters // 4) and ``last_usage_estimated`` is set. ``cost_usd`` is
always None: these endpoints have no price we know.

Keys: the key (argument, stored ``openai`` key, or ``OPENAI_API_KEY``) is sent as a Bearer token
to whatever ``base_url`` says, as the ``openai`` SDK does; ``repr`` never shows it, but agent code
in this process can read it from the model object (see ``_credentials`` for what is and is not
protected).

Not handled: ``max_completion_tokens`` (we send ``max_tokens``, which local servers take and
OpenAI's reasoning models refuse), images (placeholders), reasoning deltas (``reasoning_content``
is not kept), choices other than index 0.

``httpx`` (a dependency of ``anthropic``) is imported when a model is built, not with this module.
"""

from __future__ import annotations

import json
import os
import random
import re
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

from .._errors import ConfigError, ModelResponseError
from . import _credentials
from ._anthropic import tool_calls_from_content
from ._fenced import FencedProseStream, parse_fenced_code
from ._protocol import PYTHON_TOOL_NAME, ModelReply, ModelRequest, TextSink, ToolCall, Usage
from ._streaming import StreamingCall, StreamRelay

BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_URL = "https://api.openai.com/v1"
"""Used by ``model_from_name`` when no endpoint is given but an OpenAI key is known."""
PROVIDERS = {"openai": True, "openai-fenced": False}
"""Name prefixes ``model_from_name`` accepts, and whether the model gets the tool (else fences)."""
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
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
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

class _Accumulator:
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


# -- the model --------------------------------------------------------------------------------

class _Handle:
    """What ``StreamingCall.attach`` expects of a stream: ``.response`` and ``close()``."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def close(self) -> None:
        self.response.close()


class OpenAICompatModel:
    """A model behind ``POST {base_url}/chat/completions``, streaming; implements ``Model``.

    One ``query`` at a time per instance (``cancel`` aborts the latest one).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        tools: bool = True,
        timeout: float = 600.0,
        max_retries: int = 2,
    ) -> None:
        """``base_url`` ends where ``/chat/completions`` is appended (usually in ``/v1``).

        Key: ``api_key``, else the stored ``openai`` key (``_credentials``), else
        ``OPENAI_API_KEY``; it is sent as ``Authorization: Bearer`` to ``base_url``, whatever
        host that is (as the ``openai`` SDK does). No key: no header (local servers need none).
        ``tools=False``: code comes in fenced blocks (see the module docstring).
        """
        import httpx

        if not re.match(r"^https?://[^/\s]+", base_url or ""):
            raise ConfigError(
                f"base_url {base_url!r} is not an http(s) URL. Give the server's OpenAI-compatible "
                "root, for example http://localhost:11434/v1 (Ollama), "
                "http://localhost:8000/v1 (vLLM), http://localhost:8080/v1 (llama.cpp), "
                "http://localhost:1234/v1 (LM Studio)."
            )
        if max_retries < 0 or timeout <= 0:
            raise ConfigError(f"max_retries must be >= 0 and timeout > 0 (got {max_retries}, "
                              f"{timeout}).")
        if api_key is None:
            api_key = _credentials.get_key("openai") or os.environ.get("OPENAI_API_KEY") or None
        self.name = model
        self.base_url = base_url.rstrip("/")
        self.tools = tools
        self.max_retries = max_retries
        self.last_usage_estimated = False
        """True when the last reply's usage is an estimate (the server sent none)."""
        self._headers = {"accept": "text/event-stream"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._client: Any = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)))
        self._relay = StreamRelay("cave-openai-stream")

    def __repr__(self) -> str:
        mode = "" if self.tools else ", tools=False"
        return f"OpenAICompatModel({self.name!r}, base_url={self.base_url!r}{mode})"

    def query(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """Stream one reply; text goes to ``on_text`` in this thread as it arrives."""
        body = self.request_body(request)
        sink: TextSink = on_text if on_text is not None else (lambda text: None)
        prose = None if self.tools else FencedProseStream(sink)

        def done(acc: _Accumulator) -> ModelReply:
            if prose is not None:
                prose.finish()
            return self._reply(acc, body, request)

        return self._relay.run(partial(self._post, body), sink if prose is None else prose.feed,
                               done)

    def cancel(self) -> None:
        """Abort the in-flight ``query`` (from any thread); it raises ``TurnInterrupted(0)``."""
        self._relay.cancel()

    def close(self) -> None:
        """Release the HTTP connections (the model is unusable afterwards)."""
        self._client.close()

    def request_body(self, request: ModelRequest) -> dict[str, Any]:
        """The JSON body sent for ``request`` (public so tests and users can inspect it)."""
        body: dict[str, Any] = {
            "model": self.name,
            "messages": chat_messages(request.system, request.messages, fenced=not self.tools),
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.tools and request.tools:
            body["tools"] = chat_tools(request.tools)
        return body

    # -- worker thread ---------------------------------------------------------------------------

    def _post(self, body: dict[str, Any], call: StreamingCall) -> None:
        """Worker: POST (with retries), put ("text", str)... then ("done", _Accumulator)."""
        import httpx

        url = self.base_url + "/chat/completions"
        for attempt in range(self.max_retries + 1):
            delay: float | None = None
            try:
                with self._client.stream("POST", url, json=body, headers=self._headers) as resp:
                    if not call.attach(_Handle(resp)):
                        return
                    if resp.status_code < 400:
                        return self._read(resp, call)
                    resp.read()
                    error = _status_error(resp, self.base_url)
                    if attempt < self.max_retries and _retryable(resp):
                        delay = _retry_delay(resp.headers, attempt)
            except httpx.ConnectError:
                error = ModelResponseError(None, "connection_error",
                                           f"could not reach {self.base_url}")
                delay = _retry_delay({}, attempt) if attempt < self.max_retries else None
            except httpx.TimeoutException:
                raise ModelResponseError(None, "connection_error",
                                         f"timed out waiting for {self.base_url}") from None
            except httpx.TransportError as exc:
                raise ModelResponseError(
                    None, "connection_error", f"the connection to {self.base_url} broke during "
                    f"the reply ({type(exc).__name__}: {exc})") from None
            if delay is None or call.cancelled.wait(delay):
                break
        call.events.put(("error", error))

    def _read(self, resp: Any, call: StreamingCall) -> None:
        acc = _Accumulator()
        done = False
        for line in resp.iter_lines():
            if call.cancelled.is_set():
                return
            if not line.startswith("data:"):
                continue  # blank lines, `: comments`, `event:` and `id:` fields
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise ModelResponseError(None, "invalid_stream",
                                         f"a stream chunk was not JSON: {data[:200]!r}") from None
            if isinstance(chunk, dict) and chunk.get("error"):  # an error inside a 200 stream
                error_type, detail = _error_fields(chunk)
                raise ModelResponseError(None, error_type or "api_error", detail or data[:500])
            if isinstance(chunk, dict) and (text := acc.add(chunk)):
                call.events.put(("text", text))
        if not done and acc.finish is None and not call.cancelled.is_set():
            raise ModelResponseError(None, "connection_error", f"the stream from {self.base_url} "
                                     "ended before the reply was complete")
        call.events.put(("done", acc))

    # -- the reply -------------------------------------------------------------------------------

    def _reply(self, acc: _Accumulator, body: dict[str, Any], request: ModelRequest
               ) -> ModelReply:
        text = "".join(acc.text)
        stop_reason = _STOP_REASONS.get(acc.finish or "stop", acc.finish or "end_turn")
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        calls: list[ToolCall] = []
        if self.tools:
            answer = text
            for slot in acc.calls.values():
                block, tool_call = _tool_use(slot, stop_reason)
                content.append(block)
                calls.append(tool_call)
        else:
            answer, blocks = parse_fenced_code(text)
            first = _next_fenced_number(request.messages)
            for n, code in enumerate(blocks, first):
                block_id = f"{FENCED_ID_PREFIX}{n}"
                content.append({"type": "tool_use", "id": block_id, "name": PYTHON_TOOL_NAME,
                                "input": {"code": code}})
                calls.append(ToolCall(block_id, code))
            if blocks and stop_reason == "end_turn":
                stop_reason = "tool_use"
        out_chars = len(text) + sum(len(a) for s in acc.calls.values() for a in s["args"])
        usage, self.last_usage_estimated = _usage(acc.usage, body, out_chars)
        return ModelReply(text=answer, tool_calls=tuple(calls), usage=usage,
                          stop_reason=stop_reason, content=content, model=acc.model or self.name)


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


def _error_fields(body: object) -> tuple[str | None, str | None]:
    """Error type and message from the shapes servers use: OpenAI/Ollama/llama.cpp
    ``{"error": {...}}``, vLLM's top-level ``{"object": "error", "message", "type"}``,
    ``{"error": "text"}`` and FastAPI's ``{"detail": ...}``."""
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        return (str(kind) if kind else None), error.get("message") or None
    if isinstance(error, str):
        return None, error
    if isinstance(body.get("message"), str):
        kind = body.get("type")
        return (str(kind) if kind else None), body["message"]
    if "detail" in body:
        return None, str(body["detail"])
    return None, None


def _status_error(resp: Any, base_url: str) -> ModelResponseError:
    try:
        error_type, detail = _error_fields(resp.json())
    except ValueError:
        error_type, detail = None, resp.text.strip()[:500] or None
    status = resp.status_code
    error_type = error_type or _ERROR_TYPES.get(status, "api_error")
    detail = detail or resp.reason_phrase or "no message"
    if status == 404 and not base_url.endswith("/v1"):
        detail += f" (base_url {base_url} does not end in /v1; most servers want that)"
    return ModelResponseError(status, error_type, detail)


def _retryable(resp: Any) -> bool:
    should = resp.headers.get("x-should-retry")
    if should in ("true", "false"):
        return bool(should == "true")
    return bool(resp.status_code in (408, 429) or resp.status_code >= 500)


def _retry_delay(headers: Any, attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: the server's hint if it gives one, else back-off."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
        if 0 <= value <= 20:
            return value
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())


# -- selection --------------------------------------------------------------------------------

def is_openai_name(name: str) -> bool:
    """Whether ``name`` selects this provider (``openai:<model>``, ``openai-fenced:<model>``)."""
    return name.split(":", 1)[0] in PROVIDERS and ":" in name


def model_from_name(name: str, base_url: str | None = None, *, api_key: str | None = None,
                    timeout: float = 600.0) -> OpenAICompatModel:
    """The model for ``openai:<model>`` (tool calls) or ``openai-fenced:<model>`` (code fences).

    Endpoint: ``base_url``, else ``OPENAI_BASE_URL``, else OpenAI itself when an OpenAI key is
    known (stored or ``OPENAI_API_KEY``), else ``ConfigError`` naming the usual local URLs.
    """
    prefix, _, model = name.partition(":")
    if prefix not in PROVIDERS or not model.strip():
        raise ConfigError(
            f"Model name {name!r} is not an OpenAI-compatible one: write openai:<model> (for "
            "example openai:qwen2.5-coder:7b) or openai-fenced:<model> for a model without tool "
            "calling, which then writes its code in ```python blocks."
        )
    base_url = base_url or os.environ.get(BASE_URL_ENV) or None
    if base_url is None:
        if not (api_key or _credentials.get_key("openai") or os.environ.get("OPENAI_API_KEY")):
            raise ConfigError(
                f"{name!r} needs an endpoint: set {BASE_URL_ENV} or pass --base-url, for example "
                "http://localhost:11434/v1 (Ollama), http://localhost:8000/v1 (vLLM), "
                "http://localhost:8080/v1 (llama.cpp), http://localhost:1234/v1 (LM Studio); "
                "or set OPENAI_API_KEY to use OpenAI itself."
            )
        base_url = OPENAI_URL
    return OpenAICompatModel(model.strip(), base_url=base_url, api_key=api_key,
                             tools=PROVIDERS[prefix], timeout=timeout)
