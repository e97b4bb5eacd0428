"""OpenAI-compatible provider: the Chat Completions API over ``httpx`` (Ollama, vLLM, llama.cpp
server, LM Studio, and OpenAI itself).

The conversation stays in the Anthropic format; ``_chat_format`` translates it at the edge, for
each request, and translates each reply back (``tool_calls``, or with ``tools=False`` code in
```` ```python ```` fences, become ``tool_use`` blocks). While a fenced reply streams,
``FencedProseStream`` holds the run blocks back from ``on_text`` (they are shown again as code by
the loop's events); a block that never closes is released at the end, as prose.

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
from functools import partial
from typing import Any

from .._errors import ConfigError, ModelResponseError
from . import _credentials
from ._chat_format import ChunkAccumulator, chat_messages, chat_reply, chat_tools
from ._fenced import FencedProseStream
from ._protocol import ModelReply, ModelRequest, TextSink
from ._streaming import StreamingCall, StreamRelay

BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_URL = "https://api.openai.com/v1"
"""Used by ``model_from_name`` when no endpoint is given but an OpenAI key is known."""
PROVIDERS = {"openai": True, "openai-fenced": False}
"""Name prefixes ``model_from_name`` accepts, and whether the model gets the tool (else fences)."""
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


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
        stream_idle_timeout: float = 120.0,
    ) -> None:
        """``base_url`` ends where ``/chat/completions`` is appended (usually in ``/v1``).

        Key: ``api_key``, else the stored ``openai`` key (``_credentials``), else
        ``OPENAI_API_KEY``; it is sent as ``Authorization: Bearer`` to ``base_url``, whatever
        host that is (as the ``openai`` SDK does). No key: no header (local servers need none).
        ``tools=False``: code comes in fenced blocks (see the module docstring).
        ``stream_idle_timeout``: seconds without a byte before a reply is abandoned as stalled (a
        read timeout: it bounds the gap between chunks, not the whole reply).
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
        route = _credentials.route("openai", base_url) if api_key is None else None
        if api_key is None and route is None:
            api_key = _credentials.get_key("openai") or os.environ.get("OPENAI_API_KEY") or None
        self.name = model
        self.base_url = base_url.rstrip("/")
        self._endpoint = self.base_url if route is None else route.base_url
        """Where requests go: ``base_url``, or Cave's credential process, which adds the key."""
        self.tools = tools
        self.max_retries = max_retries
        self.last_usage_estimated = False
        """True when the last reply's usage is an estimate (the server sent none)."""
        self._headers = {"accept": "text/event-stream"}
        if route is not None:
            api_key = route.token
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self.stream_idle_timeout = min(timeout, stream_idle_timeout)
        transport = None if route is None else httpx.HTTPTransport(uds=route.uds)
        self._client: Any = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0),
                                  read=self.stream_idle_timeout),
            transport=transport,
        )
        self._relay = StreamRelay("cave-openai-stream")

    def __repr__(self) -> str:
        mode = "" if self.tools else ", tools=False"
        return f"OpenAICompatModel({self.name!r}, base_url={self.base_url!r}{mode})"

    def query(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """Stream one reply; text goes to ``on_text`` in this thread as it arrives."""
        body = self.request_body(request)
        sink: TextSink = on_text if on_text is not None else (lambda text: None)
        prose = None if self.tools else FencedProseStream(sink)

        def done(acc: ChunkAccumulator) -> ModelReply:
            if prose is not None:
                prose.finish()
            reply, self.last_usage_estimated = chat_reply(
                acc, request.messages, body, fenced=not self.tools, model=self.name)
            return reply

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
            if request.tool_choice:
                body["tool_choice"] = request.tool_choice
        return body

    # -- worker thread ---------------------------------------------------------------------------

    def _post(self, body: dict[str, Any], call: StreamingCall) -> None:
        """Worker: POST (with retries), put ("text", str)... then ("done", ChunkAccumulator)."""
        import httpx

        url = self._endpoint + "/chat/completions"
        for attempt in range(self.max_retries + 1):
            delay: float | None = None
            try:
                with self._client.stream("POST", url, json=body, headers=self._headers) as resp:
                    if not call.attach(_Handle(resp)):
                        return
                    call.answered = True
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
            except httpx.ReadTimeout:
                raise ModelResponseError(
                    None, "stalled_stream", f"the reply from {self.base_url} stalled: no data "
                    f"for {self.stream_idle_timeout:g} s") from None
            except httpx.TimeoutException:
                raise ModelResponseError(None, "connection_error",
                                         f"timed out waiting for {self.base_url}") from None
            except httpx.TransportError as exc:
                if call.answered:
                    raise ModelResponseError(
                        None, "connection_error", f"the connection to {self.base_url} broke "
                        f"during the reply ({type(exc).__name__}: {exc})") from None
                raise ModelResponseError(
                    None, "connection_error", f"the connection to {self.base_url} was closed "
                    f"before any reply ({type(exc).__name__}: {exc})") from None
            if delay is None or call.cancelled.wait(delay):
                break
        call.events.put(("error", error))

    def _read(self, resp: Any, call: StreamingCall) -> None:
        acc = ChunkAccumulator()
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
    """Whether an error answer is worth retrying; quota and billing errors never are."""
    should = resp.headers.get("x-should-retry")
    if should in ("true", "false"):
        return bool(should == "true")
    try:
        kind, _ = _error_fields(resp.json())
    except ValueError:
        kind = None
    if kind in ("insufficient_quota", "billing_error", "billing_hard_limit_reached"):
        return False
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
        if not (api_key or _credentials.get_key("openai") or os.environ.get("OPENAI_API_KEY")
                or _credentials.route("openai", OPENAI_URL)):
            raise ConfigError(
                f"{name!r} needs an endpoint: set {BASE_URL_ENV} or pass --base-url, for example "
                "http://localhost:11434/v1 (Ollama), http://localhost:8000/v1 (vLLM), "
                "http://localhost:8080/v1 (llama.cpp), http://localhost:1234/v1 (LM Studio); "
                "or set OPENAI_API_KEY to use OpenAI itself."
            )
        base_url = OPENAI_URL
    return OpenAICompatModel(model.strip(), base_url=base_url, api_key=api_key,
                             tools=PROVIDERS[prefix], timeout=timeout)
