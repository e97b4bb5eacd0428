"""Scripted replies: fixtures that stand in for a model, shared by ScriptedModel and the server.

Nothing here is a model. A *script* is a fixed list of canned replies (or a function that picks one
from the request), played back in order, so that tests, benchmarks and demos can drive the real
agent loop, and the real ``anthropic`` SDK, deterministically and offline. ``ScriptedModel`` plays a
script in-process; ``AnthropicServer`` plays the same script over HTTP in the Messages API format.

A script file is JSON, a list whose items are either replies or failures::

    [{"text": "Let me look.", "code": ["print(df.shape)"]},
     {"failure": {"status": 529}},
     {"text": "It has 3 rows."}]
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeAlias

from .._errors import ConfigError
from ..models._protocol import PYTHON_TOOL_NAME


@dataclass(frozen=True)
class Reply:
    """One canned assistant reply (a scripted fixture, not model output)."""

    text: str = ""
    """Streamed as a text block; no text block when empty."""
    code: tuple[str, ...] = ()
    """Each item becomes a ``python`` tool_use block with input ``{"code": item}``."""
    raw_tool_input: str | None = None
    """Send exactly this string as one tool_use block's input JSON (for malformed-input tests)."""
    tool: str | None = None
    """The tool ``raw_tool_input`` calls (default ``python``): for fixtures of other agents."""
    stop_reason: str | None = None
    """Default: ``"tool_use"`` when there is code or raw input, else ``"end_turn"``."""
    input_tokens: int | None = None
    """Default: estimated from the request (characters of its JSON // 4)."""
    output_tokens: int | None = None
    """Default: estimated from the reply (characters // 4)."""
    thinking: str = ""
    """A ``thinking`` block sent before the text (to test that it is kept but not shown)."""
    fault: str | None = None
    """A streaming fault injected after ``fault_after`` deltas: ``"reset"`` (the connection is
    reset), ``"truncate"`` (the stream ends cleanly but without its final events) or ``"stall"``
    (no more bytes for ``stall_s`` seconds, then the connection closes)."""
    fault_after: int = 1
    """Deltas sent before ``fault`` strikes."""
    stall_s: float = 60.0
    """How long a ``"stall"`` fault stays silent (the server's ``stop()`` ends it sooner)."""

    @property
    def effective_stop_reason(self) -> str:
        if self.stop_reason is not None:
            return self.stop_reason
        return "tool_use" if self.code or self.raw_tool_input is not None else "end_turn"


def reply(text: str = "", *code: str) -> Reply:
    """A scripted reply: ``reply("Done.", "x = 1")`` answers "Done." and asks to run ``x = 1``."""
    return Reply(text=text, code=tuple(code))


@dataclass(frozen=True)
class Failure:
    """A scripted API error (HTTP status and the API's error type), not a real provider failure."""

    status: int
    """HTTP status: 529 overloaded, 500, 429 rate limit, 400 bad request, 401 ..."""
    error_type: str = "overloaded_error"
    """The ``error.type`` of the API's error body."""
    message: str = "Overloaded"
    retry_after: float | None = None
    """Send ``retry-after: <seconds>`` (and no ``retry-after-ms``), as a rate-limited API does."""
    reset: bool = False
    """Reset the connection instead of answering (``status`` is then unused)."""
    retry: bool = True
    """False sends ``x-should-retry: false`` (billing and quota errors: retrying cannot help)."""


Script: TypeAlias = Sequence[Reply | Failure] | Callable[[dict[str, Any]], Reply | Failure]
"""Canned replies in order, or a function from the request body to the next canned reply."""


def load_script(path_or_list: str | Path | Sequence[Any]) -> list[Reply | Failure]:
    """Read a script from a JSON file (path) or from already-parsed items (list of dicts)."""
    if isinstance(path_or_list, (str, Path)):
        path = Path(path_or_list)
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"Cannot read the script {str(path)!r}: {exc}. It must be a JSON list such as "
                '[{"text": "Hi", "code": ["x = 1"]}, {"failure": {"status": 529}}].'
            ) from exc
        where = str(path)
    else:
        items, where = path_or_list, "the script"
    if not isinstance(items, list):
        raise ConfigError(f"{where} must hold a JSON list of replies, not {type(items).__name__}.")
    return [_item(item, f"{where}[{i}]") for i, item in enumerate(items)]


_REPLY_KEYS = {f.name for f in fields(Reply)}
_FAILURE_KEYS = {f.name for f in fields(Failure)}


def _item(item: Any, where: str) -> Reply | Failure:
    if isinstance(item, (Reply, Failure)):
        return item
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be an object like {{'text': ..., 'code': [...]}}.")
    if "failure" in item:
        spec = item["failure"]
        if set(item) != {"failure"} or not isinstance(spec, dict) or "status" not in spec:
            raise ConfigError(f"{where}: write a failure as {{'failure': {{'status': 529}}}}.")
        unknown = set(spec) - _FAILURE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown failure keys {sorted(unknown)}; "
                              f"known: {sorted(_FAILURE_KEYS)}.")
        return Failure(**spec)
    unknown = set(item) - _REPLY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown reply keys {sorted(unknown)}; known: "
                          f"{sorted(_REPLY_KEYS)} (or 'failure').")
    spec = dict(item)
    code = spec.get("code", ())
    spec["code"] = (code,) if isinstance(code, str) else tuple(code)
    if not all(isinstance(c, str) for c in spec["code"]):
        raise ConfigError(f"{where}: 'code' must be a string or a list of strings.")
    if spec.get("fault") not in FAULTS:
        raise ConfigError(f"{where}: 'fault' must be one of {FAULTS[1:]}, not {spec['fault']!r}.")
    return Reply(**spec)


FAULTS = (None, "reset", "truncate", "stall")


class ScriptPlayer:
    """Hands out a script's items one per request, thread-safely."""

    def __init__(self, script: Script) -> None:
        if callable(script):
            self._fn: Callable[[dict[str, Any]], Reply | Failure] | None = script
            self._items: list[Reply | Failure] = []
        else:
            self._fn = None
            self._items = list(script)
            for i, item in enumerate(self._items):
                if not isinstance(item, (Reply, Failure)):
                    raise ConfigError(f"Script item {i} is a {type(item).__name__}; use "
                                      "reply(...), Reply(...), Failure(...) or load_script().")
        self._next = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """How many items have been handed out."""
        return self._next

    def next(self, body: dict[str, Any]) -> Reply | Failure | None:
        """The next item, or None when a list script is used up."""
        if self._fn is not None:
            with self._lock:
                self._next += 1
            item = self._fn(body)
            if not isinstance(item, (Reply, Failure)):
                raise ConfigError(f"The script function returned {type(item).__name__}; "
                                  "it must return a Reply or a Failure.")
            return item
        with self._lock:
            if self._next >= len(self._items):
                return None
            item = self._items[self._next]
            self._next += 1
            return item

    def exhausted_message(self, who: str) -> str:
        return (f"{who} has no scripted reply left: the script held {len(self._items)} item(s) "
                "and all were used. Add more replies to the script (or pass a function that "
                "picks a reply from the request).")


def estimate_tokens(chars: int) -> int:
    """Rough token count: characters // 4 (at least 1). An estimate, not a tokenizer."""
    return max(1, chars // 4)


def tool_use_blocks(item: Reply, make_id: Callable[[], str]) -> list[tuple[str, str]]:
    """``(id, input JSON)`` for each tool_use block of ``item``, in order."""
    inputs = [json.dumps({"code": code}) for code in item.code]
    if item.raw_tool_input is not None:
        inputs.append(item.raw_tool_input)
    return [(make_id(), text) for text in inputs]


def parse_tool_input(raw: str) -> Any:
    """Parse tool input JSON the way the anthropic SDK's stream accumulator does.

    Partial mode: a cut-off object parses to what is complete (as when the reply hit max_tokens);
    text that is not JSON at all raises ValueError, as the SDK does.
    """
    from jiter import from_json  # a dependency of anthropic

    if not raw:
        return {}
    return from_json(raw.encode("utf-8"), partial_mode=True)


def content_blocks(item: Reply, make_id: Callable[[], str]) -> list[dict[str, Any]]:
    """The Anthropic-format assistant content of ``item``: thinking, text, then tool_use blocks.

    Raises ValueError when ``raw_tool_input`` is not JSON (the real API never sends that).
    """
    blocks: list[dict[str, Any]] = []
    if item.thinking:
        blocks.append({"type": "thinking", "thinking": item.thinking,
                       "signature": scripted_signature(item.thinking)})
    if item.text:
        blocks.append({"type": "text", "text": item.text})
    for block_id, raw in tool_use_blocks(item, make_id):
        blocks.append({"type": "tool_use", "id": block_id, "name": PYTHON_TOOL_NAME,
                       "input": parse_tool_input(raw)})
    return blocks


def scripted_signature(thinking: str) -> str:
    """A stand-in for the API's opaque thinking signature (not a real signature)."""
    import hashlib

    return "scripted-" + hashlib.sha256(thinking.encode("utf-8")).hexdigest()[:32]


def output_chars(item: Reply) -> int:
    return (len(item.text) + len(item.thinking) + sum(len(c) + 12 for c in item.code)
            + len(item.raw_tool_input or ""))


CUT_MARKERS = ("<<<CUT_INPUT\n", "\nCUT_INPUT>>>")
"""How Cave's continuation request quotes a cut call's input (``agent._rejoin.ASK``)."""


def split_tool_call(code: str, cut_at: int, *, text: str = "",
                    then: Sequence[Reply | Failure] = ()) -> Callable[[dict[str, Any]],
                                                                      Reply | Failure]:
    """A script that plays a ``python`` call cut by ``max_tokens`` and its continuation.

    The first request gets ``text`` and the call's input JSON cut after ``cut_at`` characters
    (stop reason ``max_tokens``), as the API streams a reply that hit its output limit. A
    request that quotes a prefix of that JSON between Cave's markers gets, as text, exactly the
    characters that follow the quoted prefix (what a model continuing its own output writes). A
    request that quotes nothing (asked again with more room) gets the whole call. Then ``then``
    plays in order. A fixture, not a model.
    """
    whole = json.dumps({"code": code})
    if not 0 < cut_at < len(whole):
        raise ConfigError(f"cut_at must be inside the call's {len(whole)}-character input JSON.")
    rest = list(then)
    first: list[int] = []  # the first request's message count

    def play(body: dict[str, Any]) -> Reply | Failure:
        messages = body["messages"]
        if not first:
            first.append(len(messages))
            return Reply(text=text, raw_tool_input=whole[:cut_at], stop_reason="max_tokens")
        quoted = _quoted_cut_input(messages[-1])
        if quoted is not None:  # continue from wherever the quote ends
            if whole.startswith(quoted):
                return Reply(text=whole[len(quoted):])
            return Reply(text="I cannot find that input.")  # a quote that is not what was cut
        if len(messages) == first[0]:  # the same request again (asked with more room)
            return Reply(text=text, code=(code,))
        if not rest:
            raise ConfigError("split_tool_call: no scripted reply left (add them with then=...).")
        return rest.pop(0)

    return play


def _quoted_cut_input(message: dict[str, Any]) -> str | None:
    """The cut input a continuation request quotes in its last (user) message, or None."""
    content = message.get("content")
    if message.get("role") != "user":
        return None
    text = "".join(b.get("text", "") for b in content if isinstance(b, dict)) \
        if isinstance(content, list) else str(content or "")
    _, sep, tail = text.partition(CUT_MARKERS[0])
    if not sep or CUT_MARKERS[1] not in tail:
        return None
    return tail[: tail.rindex(CUT_MARKERS[1])]
