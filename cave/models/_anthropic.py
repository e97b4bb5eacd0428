"""The primary provider: Anthropic's Messages API through the official ``anthropic`` SDK.

The SDK does the HTTP, the retries (429, 5xx, 529; ``max_retries``) and the stream parsing. This
module adds what the loop needs: text deltas to a sink as they arrive, the final content as plain
dicts that can be sent back verbatim, ``python`` tool calls checked for shape, usage with a cost,
and errors translated into ``ModelError``. ``anthropic`` is imported when a model is built, never
when this module is imported.

Interrupts: the SDK call runs in a worker thread relayed to the caller's thread (``_streaming``).
``cancel()`` wakes ``query`` at once (it raises ``TurnInterrupted``) and shuts the stream's socket
down so the worker ends too. A worker inside an SDK retry back-off or a connect is left to finish it
(a daemon thread; it exits when that returns).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from .._errors import MissingAPIKey, ModelResponseError
from . import _credentials, _pricing
from ._protocol import PYTHON_TOOL_NAME, ModelReply, ModelRequest, TextSink, ToolCall, Usage
from ._streaming import StreamingCall, StreamRelay

DEFAULT_MODEL = "claude-sonnet-5-5"
"""Current and not deprecated (see ``anthropic._data.DEPRECATED_MODELS``)."""

PLACEHOLDER_KEY = "cave-no-key"
"""Sent when a base_url is set but no key: local proxies and our test server accept it."""


def tool_calls_from_content(
    content: list[dict[str, Any]], stop_reason: str | None = None
) -> tuple[ToolCall, ...]:
    """One ToolCall per tool_use block; an unusable input gets ``code=None`` and an ``error``.

    Every tool_use block needs a tool_result in the next request, so none is dropped: a block for
    another tool, or whose input is not ``{"code": "<str>"}``, comes back with the reason, which
    the loop sends to the model as an error result.
    """
    calls: list[ToolCall] = []
    for block in content:
        if block.get("type") != "tool_use":
            continue
        block_id = str(block.get("id", ""))
        name, data = block.get("name"), block.get("input")
        error: str | None = None
        if name != PYTHON_TOOL_NAME:
            error = (f"There is no tool named {name!r}. The only tool is {PYTHON_TOOL_NAME!r}, "
                     'with input {"code": "<python source>"}.')
        elif not isinstance(data, dict):
            error = (f"The {PYTHON_TOOL_NAME!r} tool input must be a JSON object like "
                     f'{{"code": "<python source>"}}, not {_json_type(data)}.')
        elif "code" not in data:
            keys = ", ".join(sorted(data)) or "nothing"
            error = (f"The {PYTHON_TOOL_NAME!r} tool input has no \"code\" field (it has: "
                     f'{keys}). Send {{"code": "<python source>"}}.')
        elif not isinstance(data["code"], str):
            error = ('"code" must be a string of Python source, not '
                     f"{_json_type(data['code'])}.")
        if error is None:
            calls.append(ToolCall(block_id, data["code"]))  # type: ignore[index]
            continue
        if stop_reason == "max_tokens":
            error += (" The reply was cut off at max_tokens, so the input is incomplete: write "
                      "shorter code, or split it over several calls.")
        calls.append(ToolCall(block_id, None, error=error))
    return tuple(calls)


def text_from_content(content: list[dict[str, Any]]) -> str:
    """The answer text: text blocks joined (thinking blocks are not part of the answer)."""
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class AnthropicModel:
    """Claude through the Messages API, streaming; implements ``cave.models.Model``.

    One ``query`` at a time per instance (``cancel`` aborts the latest one).
    """

    DEFAULT_MODEL = DEFAULT_MODEL

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout: float = 600.0,
        max_tokens: int = 32_000,
        stream_idle_timeout: float = 120.0,
    ) -> None:
        """Resolve the key and endpoint now, so a missing key shows in the first ``%%agent`` cell.

        Key: ``api_key``, else Cave's credential process (requests go through it and it adds the
        key), else the stored key (``_credentials``), else ``ANTHROPIC_API_KEY``, else
        an ``ANTHROPIC_AUTH_TOKEN`` (stored or in the environment). Endpoint: ``base_url``, else
        ``ANTHROPIC_BASE_URL``. With an endpoint but no key, a placeholder key is sent.
        ``max_tokens`` caps each request's own ``max_tokens`` (the smaller one is used); it is
        above the loop's default 8,192 so that a reply cut inside a code call can be asked again
        with twice the room (``agent._recovery``).
        ``stream_idle_timeout``: the idle watchdog, seconds without a byte from the server before
        a reply is abandoned as stalled (a read timeout: it bounds the gap between chunks, not
        the whole reply; the API sends ``ping`` events while it works).
        """
        import anthropic

        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        auth_token: str | None = None
        route = None
        if api_key is None:  # a key in Cave's credential process: go through it
            route = _credentials.route("anthropic", base_url) or _credentials.route(
                "anthropic_auth_token", base_url
            )
        if route is not None:
            self.name = model
            self.max_tokens = max_tokens
            self._client: Any = anthropic.Anthropic(
                api_key=route.token if route.header == "x-api-key" else None,
                auth_token=route.token if route.header == "authorization" else None,
                base_url=route.base_url, max_retries=max_retries,
                timeout=anthropic.Timeout(timeout, read=min(timeout, stream_idle_timeout)),
                http_client=_uds_client(anthropic, route.uds),
            )
            self.stream_idle_timeout = min(timeout, stream_idle_timeout)
            self.base_url = (base_url or _credentials.default_upstream("anthropic")).rstrip("/")
            self._relay = StreamRelay("cave-anthropic-stream")
            return
        if api_key is None:
            api_key = _credentials.get_key("anthropic") or os.environ.get("ANTHROPIC_API_KEY")
        if not api_key:
            auth_token = (_credentials.get_key("anthropic_auth_token")
                          or os.environ.get("ANTHROPIC_AUTH_TOKEN") or None)
            api_key = None
        if api_key is None and auth_token is None:
            if base_url is None:
                raise MissingAPIKey()
            api_key = PLACEHOLDER_KEY
        self.name = model
        self.max_tokens = max_tokens
        # Explicit credentials: the SDK then reads no key, profile or token from the environment.
        self._client = anthropic.Anthropic(
            api_key=api_key, auth_token=auth_token, base_url=base_url, max_retries=max_retries,
            timeout=anthropic.Timeout(timeout, read=min(timeout, stream_idle_timeout)),
        )
        self.stream_idle_timeout = min(timeout, stream_idle_timeout)
        self.base_url = str(self._client.base_url).rstrip("/")
        self._relay = StreamRelay("cave-anthropic-stream")

    def __repr__(self) -> str:
        return f"AnthropicModel({self.name!r}, base_url={self.base_url!r})"

    def query(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """Stream one reply; text deltas go to ``on_text`` in this thread as they arrive."""
        kwargs = self._request_kwargs(request)
        return self._relay.run(partial(self._stream_into, kwargs), on_text, self._reply,
                               self._translate)

    def cancel(self) -> None:
        """Abort the in-flight ``query`` (from any thread); it raises ``TurnInterrupted(0)``."""
        self._relay.cancel()

    def close(self) -> None:
        """Release the SDK client's connections (the model is unusable afterwards)."""
        self._client.close()

    def count_tokens(self, request: ModelRequest) -> int:
        """The prompt tokens of ``request``, counted by ``/v1/messages/count_tokens``."""
        kwargs = self._request_kwargs(request)
        kwargs.pop("max_tokens")
        try:
            return int(self._client.messages.count_tokens(**kwargs).input_tokens)
        except Exception as exc:
            raise self._translate(exc) from exc

    def _request_kwargs(self, request: ModelRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.name,
            "messages": list(request.messages),
            "max_tokens": min(request.max_tokens, self.max_tokens),
        }
        if request.system:
            kwargs["system"] = list(request.system)
        if request.tools:
            kwargs["tools"] = list(request.tools)
            if request.tool_choice:
                kwargs["tool_choice"] = {"type": request.tool_choice}
        return kwargs

    def _stream_into(self, kwargs: dict[str, Any], call: StreamingCall) -> None:
        """Worker thread: run the SDK stream, put ("text", str)... then ("done", (Message, raw
        tool-input JSON per block index))."""
        finished = False
        raw: dict[int, str] = {}
        with self._client.messages.stream(**kwargs) as stream:
            if not call.attach(stream):
                return
            call.answered = True
            try:
                for event in stream:
                    if call.cancelled.is_set():
                        return
                    if event.type == "content_block_delta":
                        if event.delta.type == "text_delta":
                            call.events.put(("text", event.delta.text))
                        elif event.delta.type == "input_json_delta":
                            raw[event.index] = raw.get(event.index, "") + event.delta.partial_json
                    finished = finished or event.type == "message_stop"
            except Exception as exc:
                if call.cancelled.is_set() or _is_read_timeout(exc) or not _is_transport(exc):
                    raise
                raise ModelResponseError(
                    None, "connection_error", f"the connection to {self.base_url} broke during "
                    f"the reply ({type(exc).__name__}: {exc})") from exc
            if not finished:  # the body ended cleanly, but the reply did not
                raise ModelResponseError(None, "incomplete_stream", f"the stream from "
                                         f"{self.base_url} ended before the reply was complete")
            message = stream.get_final_message()
        call.events.put(("done", (message, raw)))

    def _reply(self, done: tuple[Any, dict[int, str]]) -> ModelReply:
        message, raw = done
        content = [_plain_block(block) for block in message.content]
        stop_reason = message.stop_reason or "end_turn"
        calls = _check_raw_inputs(content, raw, tool_calls_from_content(content, stop_reason))
        u = message.usage
        cache_read = u.cache_read_input_tokens or 0
        cache_write = u.cache_creation_input_tokens or 0
        model = message.model or self.name
        cost = _pricing.cost(model, u.input_tokens, u.output_tokens, cache_read, cache_write)
        if cost is None and model != self.name:
            cost = _pricing.cost(self.name, u.input_tokens, u.output_tokens, cache_read,
                                 cache_write)
        return ModelReply(
            text=text_from_content(content),
            tool_calls=calls,
            usage=Usage(u.input_tokens, u.output_tokens, cache_read, cache_write, cost),
            stop_reason=stop_reason,
            content=content,
            model=model,
            partial_tool_input=_cut_input(content, raw, stop_reason),
        )

    def _translate(self, exc: BaseException) -> BaseException:
        """SDK and transport errors -> ModelResponseError; anything else is a bug: unchanged."""
        import anthropic

        if isinstance(exc, anthropic.APIStatusError):
            error_type, detail = _error_fields(exc.body)
            # An `error` event inside a stream arrives on an HTTP 200 response.
            status = exc.status_code if exc.status_code >= 400 else None
            return ModelResponseError(status, error_type or "api_error", detail or str(exc))
        if isinstance(exc, ModelResponseError):
            return exc
        if _is_read_timeout(exc):
            return ModelResponseError(None, "stalled_stream", f"the reply from {self.base_url} "
                                      f"stalled: no data for {self.stream_idle_timeout:g} s")
        if isinstance(exc, anthropic.APITimeoutError):
            return ModelResponseError(None, "connection_error",
                                      f"timed out waiting for {self.base_url}")
        if isinstance(exc, anthropic.APIConnectionError):
            return ModelResponseError(None, "connection_error", f"could not reach {self.base_url}")
        if isinstance(exc, ValueError) and "tool parameter JSON" in str(exc):
            return ModelResponseError(None, "invalid_tool_input",
                                      f"the reply's tool input was not JSON ({exc})")
        if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2"):
            return ModelResponseError(
                None, "connection_error",
                f"the connection to {self.base_url} broke during the reply "
                f"({type(exc).__name__}: {exc})",
            )
        return exc


def _check_raw_inputs(content: list[dict[str, Any]], raw: dict[int, str],
                      calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    """Refuse a call whose streamed input was not strict JSON, although the SDK's lenient
    (partial-mode) parser made an object of it: code from a malformed input never runs."""
    import json

    bad: dict[str, str] = {}
    for index, block in enumerate(content):
        text = raw.get(index)
        if block.get("type") != "tool_use" or not text:
            continue
        try:
            json.loads(text, strict=False)
        except ValueError as exc:
            bad[str(block.get("id"))] = (
                f"The tool input was not valid JSON ({exc}); it began {text[:120]!r}. Nothing "
                'was run. Send a JSON object like {"code": "<python source>"}.')
    if not bad:
        return calls
    return tuple(ToolCall(c.id, None, error=bad[c.id]) if c.id in bad and c.code is not None
                 else c for c in calls)


def _cut_input(content: list[dict[str, Any]], raw: dict[int, str], stop_reason: str
               ) -> str | None:
    """The raw input JSON of the last block when max_tokens cut a tool call in the middle."""
    import json

    if stop_reason != "max_tokens" or not content or content[-1].get("type") != "tool_use":
        return None
    text = raw.get(len(content) - 1, "")
    try:
        json.loads(text, strict=False)
    except ValueError:
        return text
    return None  # the input was whole: only what came after it was cut


def _is_transport(exc: BaseException) -> bool:
    """A transport failure (the SDK's connection error, or a raw httpx/httpcore one)."""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is None:
            continue
        if type(e).__name__ in ("APIConnectionError",) or type(e).__module__.split(".")[0] in (
                "httpx", "httpx2", "httpcore", "httpcore2"):
            return True
    return False


def _is_read_timeout(exc: BaseException) -> bool:
    """An httpx read timeout, raw (mid-stream) or as the SDK's cause."""
    for e in (exc, exc.__cause__, exc.__context__):
        if type(e).__name__ == "ReadTimeout":
            return True
    return False


def _uds_client(anthropic: Any, path: str) -> Any:
    """The SDK's own HTTP client class over the credential process's unix socket (the SDK may
    use ``httpx`` or its fork ``httpx2``, and refuses the other's objects)."""
    import importlib

    client_class = anthropic.DefaultHttpxClient
    base = next(c for c in client_class.__mro__[1:] if c.__name__ == "Client")
    http = importlib.import_module(base.__module__.partition(".")[0])
    return client_class(transport=http.HTTPTransport(uds=path))


def _plain_block(block: Any) -> dict[str, Any]:
    """An SDK content block as the dict to send back: API field names, no None fields."""
    data: dict[str, Any] = block.to_dict(mode="json", exclude_none=True, warnings=False)
    data.pop("parsed_output", None)  # an SDK-side field, not part of the API
    return data


def _error_fields(body: object) -> tuple[str | None, str | None]:
    """``error.type`` and ``error.message`` from an API error body, when it has them."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return error.get("type"), error.get("message")
    return None, None
