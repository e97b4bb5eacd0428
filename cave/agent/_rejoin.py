"""Rejoin a ``python`` tool call that ``max_tokens`` cut in two, before it runs.

What the real APIs accept (checked against Anthropic's documentation): a partial ``tool_use``
block cannot be sent back to be continued (its ``input`` must be a whole object, and every
``tool_use`` needs a ``tool_result`` next), and prefilling the assistant's reply is refused with a
400 on Claude 4.6 and later; Chat Completions has no prefill at all (OpenAI starts a new message).
So the continuation is asked for in a way every model of both providers takes: the request again,
then the cut reply's text (if any) as the assistant's message, then a user message that quotes the
call's input JSON as streamed so far and asks for only the characters that follow, with
``tool_choice: none`` so the answer comes as text. The model's text is appended to the partial
JSON; the joint is parsed (a reply cut again is continued again, up to ``max_continuations``) and
checked like any tool input. Only a joint that parses into ``{"code": "<str>"}`` becomes the call;
otherwise the caller falls back to asking again with more room, and says so. Nothing runs before
the call is whole, so the code runs once.

Not done: continuing a cut call when the provider does not report the raw partial input (the
fall-back then applies), and a cut call followed by a model that writes its continuation as a new
tool call instead of text (the joint fails to parse: the fall-back). With extended thinking on,
the cut reply's thinking blocks are not sent back with its text (Cave does not turn thinking on).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from ..models._anthropic import text_from_content, tool_calls_from_content
from ..models._protocol import ModelReply, ModelRequest

ASK = (
    "[cave] Your last reply was cut off by the output limit (max_tokens) in the middle of a "
    "`{name}` tool call, so nothing was run. The call's input JSON so far is between the "
    "markers below. Reply with only the characters that come right after it, up to and "
    "including the closing brace: no repetition of what is there, no code fences, no "
    "commentary. The two parts are joined and the call runs once.\n"
    "<<<CUT_INPUT\n{partial}\nCUT_INPUT>>>"
)


def continuation_request(base: ModelRequest, cut: ModelReply, partial: str) -> ModelRequest:
    """``base`` again, then the cut reply's text and the request to continue its last call."""
    call = cut.content[-1]
    messages = list(base.messages)
    text = [{"type": "text", "text": b["text"]} for b in cut.content
            if b.get("type") == "text" and b.get("text", "").strip()]
    ask = {"type": "text", "text": ASK.format(name=call.get("name", "python"), partial=partial)}
    if text:
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": [ask]}]
    elif messages and messages[-1].get("role") == "user":  # keep the roles alternating
        last = messages[-1]
        content = last["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        messages[-1] = {"role": "user", "content": [*blocks, ask]}
    else:
        messages.append({"role": "user", "content": [ask]})
    return replace(base, messages=messages, tool_choice="none")


def continuation_text(reply: ModelReply) -> str:
    """The characters the model sent to continue the input (its text blocks)."""
    text = text_from_content(reply.content) if reply.content else reply.text
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):  # a fence despite being asked
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        return stripped[: stripped.rfind("```")].rstrip("\n")
    return text


def join(cut: ModelReply, partial: str, rest: ModelReply, usage_so_far: Any
         ) -> tuple[ModelReply | None, str]:
    """(the cut reply with its last call whole, "") or (None, why the joint is not a call).

    ``usage_so_far``: the usage of the cut reply and earlier continuations (summed in)."""
    joined = partial + continuation_text(rest)
    try:
        data, _ = json.JSONDecoder(strict=False).raw_decode(joined)  # text after it is ignored
    except ValueError as exc:
        return None, f"the joined input is not JSON ({exc})"
    block = {**cut.content[-1], "input": data}
    [call] = tool_calls_from_content([block])
    if call.code is None:
        return None, call.error or "the joined input is not a python call"
    content = [*cut.content[:-1], block]
    earlier = cut.tool_calls[:-1]  # as the provider checked them (a malformed one stays refused)
    return replace(cut, text=text_from_content(content),
                   tool_calls=(*earlier, call), stop_reason="tool_use",
                   usage=usage_so_far + rest.usage, content=content, partial_tool_input=None,
                   model=rest.model or cut.model), ""
