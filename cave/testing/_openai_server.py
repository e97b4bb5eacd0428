"""``OpenAIServer``: a loopback fake of the OpenAI Chat Completions API that plays a script.

A test fixture, not a model: every reply comes from the same ``Reply``/``Failure`` scripts as
``AnthropicServer`` and ``ScriptedModel`` (see ``_script``). It serves ``POST /v1/chat/completions``
streaming (``data: {chunk}`` lines, ``data: [DONE]``, the usage chunk when
``stream_options.include_usage`` is set) and not streaming, and ``GET /v1/models``. A ``Reply``'s
``code`` becomes ``tool_calls`` deltas; with ``fenced=True`` (a model without tool use, like many
local ones) it becomes ```` ```python ```` blocks in the text instead, and a request that sends
``tools`` is refused with 400 as Ollama does. ``thinking`` is streamed as ``reasoning_content``.

It checks what the real API checks about the conversation (roles, every ``tool_calls`` id answered
by a ``tool`` message right after it, no ``tool`` message without one), so a client that translates
a history wrongly gets the API's 400. Token counts are estimates (characters // 4); there is no
prompt cache. It binds 127.0.0.1 only.

The HTTP plumbing (threads, connection tracking, ``stop()``, the recorded requests, the key check,
the event stream) is ``_loopback``'s. Run it as a process for notebooks and browser tests::

    python -m cave.testing._openai_server --script replies.json [--fenced] [--port N]

prints the base URL (ending in ``/v1``) on its first stdout line and serves until killed.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, cast

from ..models._protocol import PYTHON_TOOL_NAME
from ._loopback import (
    LoopbackHandler,
    LoopbackServer,
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
    tool_use_blocks,
)

FINISH_REASONS = {"tool_use": "tool_calls", "end_turn": "stop", "max_tokens": "length",
                  "refusal": "content_filter"}
"""A scripted ``stop_reason`` (Messages API words) -> the ``finish_reason`` sent."""
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class _ChatHandler(LoopbackHandler):
    """``POST /v1/chat/completions`` (streaming or not) and ``GET /v1/models``."""

    key_error = ("invalid_request_error", "Incorrect API key provided.", "invalid_api_key")
    script_error_type = "server_error"

    def route(self, method: str, path: str, body: Any) -> None:
        app = cast("OpenAIServer", self.server.app)
        if (method, path) == ("GET", "/v1/models"):
            return self.send_json(200, {"object": "list", "data": [
                {"id": "scripted", "object": "model", "created": 0, "owned_by": "cave-testing"}]})
        if (method, path) != ("POST", "/v1/chat/completions"):
            return self.send_api_error(
                404, "invalid_request_error", f"Unknown request URL: {method} {path}. Served "
                "here: POST /v1/chat/completions, GET /v1/models.")
        problem = _validate(body, app.fenced)
        if problem is not None:
            return self.send_api_error(400, "invalid_request_error", problem)
        item = self.script_item(body)
        if item is None:
            return None
        whole, chunks = app._completion(body, item)
        if body.get("stream"):
            self.send_events(
                (None if data is None else
                 f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
                 for data in [*chunks, "[DONE]"]), item)
        else:
            self.send_json(200, whole)
        return None

    def error_body(self, error_type: str, message: str, code: str | None) -> dict[str, Any]:
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


class OpenAIServer(LoopbackServer):
    """Serves a script as the Chat Completions API on 127.0.0.1 (a test fixture, not a model).

    ``fenced``: code goes in fenced text and ``tools`` are refused. ``send_usage=False``: no usage
    chunk even when asked (as some servers do). ``chunk_size``, ``latency``, ``api_key``, ``port``:
    as for ``AnthropicServer``. ``base_url`` ends in ``/v1``, as OpenAI clients expect.
    """

    handler_class = _ChatHandler
    thread_name = "cave-openai-server"
    url_suffix = "/v1"

    def __init__(
        self,
        script: Script,
        *,
        fenced: bool = False,
        send_usage: bool = True,
        chunk_size: int = 16,
        latency: float = 0.0,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(script, chunk_size=chunk_size, latency=latency, api_key=api_key,
                         port=port)
        self.fenced = fenced
        self.send_usage = send_usage

    def text_of(self, item: Reply) -> str:
        """The assistant text sent for ``item``: with code in fences when ``fenced``."""
        if not self.fenced:
            return item.text
        parts = [item.text] if item.text else []
        parts += [f"```python\n{code.rstrip(chr(10))}\n```" for code in item.code]
        return "\n\n".join(parts) + (item.raw_tool_input or "")

    def _completion(self, body: dict[str, Any], item: Reply
                    ) -> tuple[dict[str, Any], list[dict[str, Any] | None]]:
        """The whole ``chat.completion`` and its stream chunks (``None`` marks a pause point)."""
        text = self.text_of(item)
        calls = [] if self.fenced else tool_use_blocks(item, lambda: new_id("call_"))
        finish = FINISH_REASONS.get(item.effective_stop_reason, item.effective_stop_reason)
        if self.fenced and finish == "tool_calls":
            finish = "stop"
        prompt = (item.input_tokens if item.input_tokens is not None
                  else estimate_tokens(len(json.dumps(body, default=str))))
        completion = (item.output_tokens if item.output_tokens is not None
                      else estimate_tokens(output_chars(item)))
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": 0}}
        head = {"id": new_id("chatcmpl-"), "created": int(time.time()), "model": body["model"],
                "system_fingerprint": None}
        tool_calls: list[dict[str, Any]] = [
            {"id": i, "type": "function", "function": {
                "name": item.tool if item.tool and raw == item.raw_tool_input else PYTHON_TOOL_NAME,
                "arguments": raw}}
            for i, raw in calls]
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if item.thinking:
            message["reasoning_content"] = item.thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        whole = dict(head, object="chat.completion", usage=usage, choices=[
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}])

        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if wants_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return dict(head, object="chat.completion.chunk", **extra, choices=[
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

        def pieces(s: str) -> list[str]:
            return [s[i : i + self.chunk_size] for i in range(0, len(s), self.chunk_size)]

        chunks: list[dict[str, Any] | None] = [chunk({"role": "assistant", "content": ""})]
        for piece in pieces(item.thinking):
            chunks += [None, chunk({"reasoning_content": piece})]
        for piece in pieces(text):
            chunks += [None, chunk({"content": piece})]
        for index, call in enumerate(tool_calls):
            opening = dict(call, index=index, function=dict(call["function"], arguments=""))
            chunks += [None, chunk({"tool_calls": [opening]})]
            for piece in pieces(call["function"]["arguments"]):
                chunks += [None, chunk({"tool_calls": [{"index": index,
                                                        "function": {"arguments": piece}}]})]
        chunks.append(chunk({}, finish))
        if wants_usage and self.send_usage:
            chunks.append(dict(head, object="chat.completion.chunk", choices=[], usage=usage))
        return whole, chunks


def _validate(body: Any, fenced: bool) -> str | None:
    """The API's 400 message for a body it would refuse, or None."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request: send a JSON object."
    if not isinstance(body.get("model"), str):
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    if "max_tokens" in body and (not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1):
        return "Invalid 'max_tokens': expected a positive integer."
    tools = body.get("tools")
    if tools is not None:
        if fenced:
            return f'"{body["model"]}" does not support tools'
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and t.get("type") == "function"
                and isinstance((t.get("function") or {}).get("name"), str) for t in tools):
            return "Invalid 'tools': each tool must be {'type': 'function', 'function': {...}}."
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("none", "auto", "required") and not (
            isinstance(choice, dict) and choice.get("type") == "function"):
        return "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a function."
    pending: list[str] = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            return f"Invalid value for 'messages[{i}].role': {role!r}."
        if role == "tool":
            if m.get("tool_call_id") not in pending:
                return (f"Invalid parameter: messages[{i}] with role 'tool' must be a response to "
                        "a preceding message with 'tool_calls'.")
            pending.remove(m["tool_call_id"])
            continue
        if pending:
            return ("An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                    f"response messages: {', '.join(pending)}")
        content = m.get("content")
        if not (isinstance(content, (str, list)) or (role == "assistant" and content is None)):
            return f"Invalid type for 'messages[{i}].content': expected a string or an array."
        calls = m.get("tool_calls") if role == "assistant" else None
        if calls is not None and not isinstance(calls, list):
            return f"Invalid type for 'messages[{i}].tool_calls': expected an array."
        for call in calls or []:
            function = call.get("function") if isinstance(call, dict) else None
            if not (isinstance(function, dict) and isinstance(call.get("id"), str)
                    and isinstance(function.get("name"), str)
                    and isinstance(function.get("arguments"), str)):
                return (f"Invalid 'messages[{i}].tool_calls': each needs an id, and a function "
                        "with a name and arguments (a JSON string).")
            pending.append(call["id"])
    if pending:
        return ("An assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id': {', '.join(pending)}")
    return None


def main(argv: list[str] | None = None) -> int:
    """Serve a script file until killed; the first stdout line is the base URL."""
    parser = script_parser(
        "python -m cave.testing._openai_server",
        "Loopback OpenAI Chat Completions API that plays a script of canned replies "
        "(a test fixture, not a model).",
    )
    parser.add_argument("--fenced", action="store_true", help="code in ```python text, no tools")
    parser.add_argument("--no-usage", action="store_true", help="never send the usage chunk")
    args = parser.parse_args(argv)
    return serve_until_killed(OpenAIServer(load_script(args.script), fenced=args.fenced,
                                           send_usage=not args.no_usage, **server_options(args)))


if __name__ == "__main__":
    sys.exit(main())
