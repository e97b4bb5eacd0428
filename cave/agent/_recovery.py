"""Survive what a model service does wrong, without ever running the model's code twice.

Code runs only after a reply is complete (the loop executes ``reply.tool_calls`` once the call has
returned), so repeating a *call* can never repeat code. What this module does with each fault:

* HTTP 429 / 500 / 529 and refused connections are retried by the provider client first (the
  ``anthropic`` SDK; ``OpenAICompatModel``), honouring ``retry-after``. What outlives those
  retries, and what they do not cover (a connection that breaks during the reply, a stream that
  ends without its final event, a stream that stalls past the idle watchdog, tool-input JSON the
  SDK cannot parse, an overloaded or 5xx answer), is retried here: the whole call, up to
  ``RetryPolicy.max_retries`` times, with exponential back-off and jitter, the wait cut short by
  the stop button. Authentication, permission, billing, quota and other 4xx errors are not retried.
* A request over the context window (400 "prompt is too long", ``context_length_exceeded``):
  rebuilt once with forced compaction and sent again; a second refusal ends the turn.
* A reply with neither text nor a tool call never enters the history (the API refuses an empty
  assistant message, which would make every later turn fail); the call is repeated once, then the
  turn ends with ``EmptyModelReply``.
* ``max_tokens`` in the middle of text: the reply is continued (the partial reply is sent back as
  the start of the assistant's message and the continuation joined to it), up to
  ``max_continuations`` times. A model that refuses the prefill with a 400 (Claude 4.6 and
  later) is asked instead, in a user message after its partial reply, to continue it.
* ``max_tokens`` in the middle of a tool call: the model is asked for the rest of the call's
  input, and the halves are joined, parsed and checked before anything runs (``_rejoin``). When
  the provider did not report the partial input, or the joint is not a valid call, the request is
  asked again once with twice the output budget (said in a notice); the cut call never runs.
* ``refusal``: the reply is kept, and a notice saying that the model declined is added to the
  answer (and shown), so a partial text is never mistaken for an answer.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .._errors import EmptyModelReply, ModelResponseError, TurnInterrupted
from ..models._anthropic import text_from_content, tool_calls_from_content
from ..models._protocol import Model, ModelReply, ModelRequest, TextSink, Usage
from . import _rejoin


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the loop tries before a model fault ends the turn."""

    max_retries: int = 3
    """Repeats of one call after a transient fault (on top of the provider client's own)."""
    base_delay_s: float = 0.5
    """First back-off; doubles each retry, with up to 25% jitter off."""
    max_delay_s: float = 8.0
    max_continuations: int = 2
    """Times a reply cut by ``max_tokens`` in its text is continued."""


RETRIED_TYPES = frozenset({
    "connection_error", "incomplete_stream", "stalled_stream", "invalid_stream",
    "invalid_tool_input", "overloaded_error", "api_error", "server_error", "timeout_error",
})
"""Error types worth repeating the call for (nothing has run; the service may answer next time)."""
NEVER_RETRIED = frozenset({
    "authentication_error", "permission_error", "billing_error", "insufficient_quota",
    "invalid_api_key", "not_found_error",
})
_TOO_LONG = re.compile(r"prompt is too long|context_length_exceeded|maximum context length|"
                       r"context window|too many tokens", re.IGNORECASE)

REFUSAL_NOTICE = ("\n\n*[cave] The model declined to continue (stop reason: refusal). Rephrase the "
                  "request, or start afresh with `%cave reset` (the variables are kept).*")

Notify = Callable[[str], None]
"""Receives a one-line notice for the cell (a retry, a compaction, a continuation)."""


def is_context_overflow(exc: ModelResponseError) -> bool:
    return exc.status in (400, 413) and bool(_TOO_LONG.search(f"{exc.error_type} {exc.detail}"))


def is_transient(exc: ModelResponseError) -> bool:
    if exc.error_type in NEVER_RETRIED or is_context_overflow(exc):
        return False
    if exc.status is not None and (exc.status in (408, 409, 429) or exc.status >= 500):
        return True
    return exc.status is None and exc.error_type in RETRIED_TYPES


def query(
    model: Model,
    build: Callable[[bool], ModelRequest],
    on_text: TextSink,
    notify: Notify,
    cancelled: threading.Event,
    step: int,
    policy: RetryPolicy = RetryPolicy(),
) -> ModelReply:
    """One model call that survives faults (see the module docstring). ``build(force_compact)``
    makes the request; ``notify`` gets one line per recovery action."""
    request = build(False)
    compacted = empty = continued = grown = 0
    spent = Usage()  # calls whose reply was dropped (a cut call asked again): still paid for
    calls = 0  # model calls answered, for ModelReply.calls
    reply: ModelReply | None = None
    base: ModelRequest | None = None  # the request before any continuation
    prefill = True
    while True:
        try:
            reply_part = _call(model, request, on_text, notify, cancelled, step, policy,
                               lambda: build(True), compacted)
        except ModelResponseError as exc:
            if reply is None or base is None or not prefill or not _refuses_prefill(exc):
                raise
            prefill = False
            notify("the model does not take the start of its reply back (no prefill); asking "
                   "it to continue in a new message")
            request = _continuation(base, reply, prefill=False)
            continue
        if isinstance(reply_part, ModelRequest):  # context overflow: compacted request to send
            request, compacted = reply_part, compacted + 1
            continue
        part = reply_part
        calls += 1
        if reply is not None:  # a continuation of a reply cut at max_tokens
            part = _join(reply, part)
        if not part.text.strip() and not part.tool_calls and reply is None:
            empty += 1
            if empty > 1:
                raise EmptyModelReply(step)
            spent += part.usage
            notify("the model sent an empty reply (no text, no code); asking again")
            continue
        if part.stop_reason == "max_tokens":
            cut_call = any(b.get("type") == "tool_use" for b in part.content[-1:])
            if cut_call and grown == 0 and reply is None:
                why = "the provider did not report the cut input"
                if part.partial_tool_input is not None:
                    joined, why, paid, n = _rejoin_call(model, request, part, notify,
                                                        cancelled, step, policy)
                    calls += n
                    if joined is not None:
                        return replace(joined, usage=joined.usage + spent, calls=calls)
                    spent += paid
                else:
                    spent += part.usage
                grown += 1
                notify(f"the reply was cut at max_tokens inside a code call and could not be "
                       f"rejoined ({why}); asking again with {request.max_tokens * 2:,} output "
                       "tokens (the cut call was not run)")
                request = replace(request, max_tokens=request.max_tokens * 2)
                continue
            if not cut_call and continued < policy.max_continuations and part.text.strip():
                continued += 1
                notify("the reply was cut at max_tokens; continuing it")
                reply, base = part, base or request
                request = _continuation(base, part, prefill=prefill)
                continue
        if part.stop_reason == "refusal":  # shown and answered; no code from it runs
            on_text(REFUSAL_NOTICE)
            content = [b for b in part.content if b.get("type") != "tool_use"]
            part = replace(part, text=part.text + REFUSAL_NOTICE, tool_calls=(),
                           content=content or [{"type": "text", "text": "[refused]"}])
        return replace(part, usage=part.usage + spent, calls=calls)


def _rejoin_call(model: Model, request: ModelRequest, cut: ModelReply, notify: Notify,
                 cancelled: threading.Event, step: int, policy: RetryPolicy
                 ) -> tuple[ModelReply | None, str, Usage, int]:
    """Ask for the rest of the cut call and join it (``_rejoin``): (the whole reply, "", usage,
    calls made) or (None, why not, the usage spent trying, calls made)."""
    notify("the reply was cut at max_tokens inside a code call; asking the model for the rest "
           "of the call (nothing has run)")
    partial, paid = cut.partial_tool_input or "", cut.usage
    why, n = "no continuation", 0
    for _ in range(max(1, policy.max_continuations)):
        ask = _rejoin.continuation_request(request, cut, partial)
        try:
            rest = _call(model, ask, lambda text: None, notify, cancelled, step, policy,
                         _no_compaction, compacted=1)
        except ModelResponseError as exc:
            return None, f"the continuation request failed: {exc.detail}", paid, n
        assert isinstance(rest, ModelReply)
        n += 1
        joined, why = _rejoin.join(cut, partial, rest, paid)
        if joined is not None:
            notify("the cut code call was rejoined with its continuation")
            return joined, "", joined.usage, n
        paid += rest.usage
        if rest.stop_reason != "max_tokens" or rest.tool_calls:
            break
        partial += _rejoin.continuation_text(rest)  # cut again: ask for what follows that
    return None, why, paid, n


def _call(model: Model, request: ModelRequest, on_text: TextSink, notify: Notify,
          cancelled: threading.Event, step: int, policy: RetryPolicy,
          compact: Callable[[], ModelRequest], compacted: int) -> ModelReply | ModelRequest:
    """The call, repeated over transient faults; a compacted request on a context overflow."""
    for attempt in range(policy.max_retries + 1):
        try:
            return model.query(request, on_text)
        except ModelResponseError as exc:
            if is_context_overflow(exc) and compacted == 0:
                notify(f"the request was over the model's context window ({exc.detail}); "
                       "compacting the conversation and sending it again")
                return compact()
            if not is_transient(exc) or attempt >= policy.max_retries:
                raise
            delay = min(policy.base_delay_s * 2**attempt, policy.max_delay_s)
            delay *= 1 - 0.25 * random.random()
            notify(f"{exc.detail}; retrying in {delay:.1f} s "
                   f"({attempt + 1}/{policy.max_retries})")
            if cancelled.wait(delay):
                raise TurnInterrupted(step) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _no_compaction() -> ModelRequest:
    raise AssertionError("unreachable: compacted=1 makes an overflow raise")  # pragma: no cover


CONTINUE = ("[cave] Your reply was cut off by the output limit (max_tokens). Continue it exactly "
            "where it stops, without repeating anything.")


def _continuation(request: ModelRequest, partial: ModelReply, *, prefill: bool = True
                  ) -> ModelRequest:
    """The request again, with the partial reply as the start of the assistant's message; or,
    for models that refuse a prefill (Claude 4.6 and later), as a whole assistant message
    followed by a user message asking to continue it."""
    content = [dict(b) for b in partial.content if b.get("type") == "text"]
    if content:  # the API refuses a final assistant message that ends in whitespace
        content[-1]["text"] = content[-1]["text"].rstrip()
    content = [b for b in content if b["text"]]
    messages = [*request.messages, {"role": "assistant", "content": content}]
    if not prefill:
        messages.append({"role": "user", "content": [{"type": "text", "text": CONTINUE}]})
    return replace(request, messages=messages)


def _refuses_prefill(exc: ModelResponseError) -> bool:
    return exc.status == 400 and "prefill" in f"{exc.error_type} {exc.detail}".lower()


def _join(first: ModelReply, rest: ModelReply) -> ModelReply:
    """One reply from a reply cut at max_tokens and its continuation."""
    content: list[dict[str, Any]] = [dict(b) for b in first.content]
    for block in rest.content:
        if block.get("type") == "text" and content and content[-1].get("type") == "text":
            joined = content[-1]["text"].rstrip() + block["text"]  # the prefill was rstripped
            content[-1] = {**content[-1], "text": joined}
        else:
            content.append(dict(block))
    return replace(
        rest,
        text=text_from_content(content),
        tool_calls=tool_calls_from_content(content, rest.stop_reason),
        usage=first.usage + rest.usage,
        content=content,
    )
