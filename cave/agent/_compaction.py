"""Keep each request inside the model's context window: elide old outputs, then summarise.

The runtime is the memory that matters (DESIGN.md): a variable the agent set ten turns ago is
still there, so the text of that turn can go. Compaction is applied to the *request*, never to the
stored history, so checkpoints and the audit log keep everything.

Two tiers, cheapest first:

1. ``compact``: old execution outputs become placeholders, oldest turn first, until the request
   fits (a line naming an ``_output_N`` variable is kept). The last ``KEEP_RECENT_TURNS`` turns
   stay whole.
2. ``Compactor``: if that is not enough, the oldest turns are replaced by a summary that the model
   writes in a separate call (``_summariser``), asked to keep the names and meaning of the
   variables those turns created. A later compaction *updates* the summary with the turns since
   (it never summarises a summary of a summary). Summaries are made with head-room (down to
   ``TARGET_FRACTION`` of the budget), so the compacted prefix (summary + the turns after it)
   stays byte-identical from step to step and the provider's prompt cache keeps working until the
   next compaction. ``FAILURES_TO_OPEN`` summariser failures in a row open a circuit breaker: for
   ``COOL_DOWN_S`` the turn goes on with elided outputs only, then one attempt is allowed again.

Token counts: a local estimate calibrated for dense scripts (CJK and other non-ASCII text cost
about a token per character, ASCII about a quarter), scaled by the ratio between the provider's
reported prompt tokens and our estimate of that same request (``observe``). ``%cave context``
asks the provider's counting endpoint when the model has one, and says which number it shows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..runtime._outputs import KEPT_PREFIX

CHARS_PER_TOKEN = 4
"""ASCII characters per token (English prose and code run 3.5-4.5 on current tokenizers)."""
NON_ASCII_TOKENS_PER_CHAR = 1.0
"""CJK characters are about one token each (often more); other non-ASCII letters fewer. Counting
every non-ASCII character as a token over-estimates accented Latin text, a safe error."""
KEEP_RECENT_TURNS = 2
"""Turns (user prompts) at the end of the history that are never compacted."""
TARGET_FRACTION = 0.5
"""A summary brings the request down to this fraction of the budget, leaving room to grow."""
FAILURES_TO_OPEN = 3
COOL_DOWN_S = 300.0

SUMMARY_HEADER = "[Summary of the earlier conversation, written by the model when it was compacted]"


def text_tokens(text: str) -> int:
    """Estimated tokens of ``text`` (see the module docstring)."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    other = len(text) - ascii_chars
    return int(ascii_chars / CHARS_PER_TOKEN + other * NON_ASCII_TOKENS_PER_CHAR)


def estimate_tokens(messages: Sequence[dict[str, Any]]) -> int:
    return text_tokens(json.dumps(list(messages), ensure_ascii=False))


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
    return _elide(list(history), budget_tokens, KEEP_RECENT_TURNS)[0]


def _elide(messages: list[dict[str, Any]], budget_tokens: int | None, keep_recent: int,
           tokens: Callable[[dict[str, Any]], int] | None = None,
           shorten: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
           ) -> tuple[list[dict[str, Any]], int]:
    """(messages with old outputs elided until they fit, how many turns were elided).

    ``tokens``/``shorten``: per-message estimate and elision (``Compactor`` passes cached ones)."""
    size = tokens or (lambda m: estimate_tokens([m]))
    shorten = shorten or _elide_outputs
    total = sum(size(m) for m in messages)
    if budget_tokens is None or total <= budget_tokens:
        return messages, 0
    starts = turn_starts(messages)
    protected_from = starts[-keep_recent] if len(starts) >= keep_recent else 0
    elided = 0
    for turn_start, turn_end in zip(starts, [*starts[1:], len(messages)], strict=True):
        if turn_start >= protected_from or total <= budget_tokens:
            break
        elided += 1
        for i in range(turn_start, turn_end):
            before = size(messages[i])
            messages[i] = shorten(messages[i])
            total -= before - size(messages[i])
    return messages, elided


def turn_starts(messages: Sequence[dict[str, Any]], start: int = 0) -> list[int]:
    return [i for i in range(start, len(messages)) if _starts_turn(messages[i])]


def _starts_turn(message: dict[str, Any]) -> bool:
    """A user message carrying the user's text (not only tool results) opens a turn."""
    if message["role"] != "user":
        return False
    return any(
        b.get("type") == "text" and not b["text"].startswith(("[This turn was stopped",
                                                               SUMMARY_HEADER))
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
            short = placeholder(len(text))
            kept = [line for line in text.splitlines() if line.startswith(KEPT_PREFIX)]
            if kept:
                short += "\n" + "\n".join(kept)
            if len(text) > len(short):
                block = {**block, "content": [{"type": "text", "text": short}]}
        content.append(block)
    return {"role": "user", "content": content}


Summarise = Callable[[str | None, Sequence[dict[str, Any]]], str]
"""(summary so far or None, the messages to fold in) -> the new summary; raises on failure."""


@dataclass(frozen=True)
class Compaction:
    """What one compaction did (shown as one line in the cell and written to the audit log)."""

    summarised_turns: int
    """Turns folded into the summary by this compaction (0: outputs were elided only)."""
    tokens_before: int
    tokens_after: int
    summary_tokens: int
    note: str = ""

    def line(self) -> str:
        what = (f"{self.summarised_turns} older turn(s) folded into the summary"
                if self.summarised_turns else "old outputs elided")
        text = (f"context compacted: {what}; request ~{self.tokens_before:,} -> "
                f"~{self.tokens_after:,} tokens (estimated)")
        return text + (f"; {self.note}" if self.note else "")


class Compactor:
    """The summary and the circuit breaker of one conversation; builds each request's history.

    ``clock`` is injectable so tests move through the cool-down without waiting.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.summary: str | None = None
        self.covered = 0
        """History messages [0, covered) are represented by ``summary``."""
        self.failures = 0
        self.open_until = 0.0
        self.scale = 1.0
        """Provider tokens per estimated token, from the last reply (``observe``)."""
        self.last: Compaction | None = None
        self.compactions = 0
        self._elided = 0
        """Turns elided (after the summary) in the last request: a line only when it grows."""
        self._clock = clock
        self._sizes: dict[int, tuple[dict[str, Any], int]] = {}
        self._short: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}

    # -- per-message caches: a step's cost does not grow with the history ----------------------
    def _tokens(self, message: dict[str, Any]) -> int:
        """Estimated tokens of one message, cached by identity (history messages are never
        edited in place: the loop replaces a message to extend it)."""
        hit = self._sizes.get(id(message))
        if hit is not None and hit[0] is message:
            return hit[1]
        n = estimate_tokens([message])
        self._sizes[id(message)] = (message, n)
        return n

    def _shorten(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` with its outputs elided, the same object each time (a stable prefix)."""
        hit = self._short.get(id(message))
        if hit is not None and hit[0] is message:
            return hit[1]
        short = _elide_outputs(message)
        self._short[id(message)] = (message, short)
        return short

    def _elide(self, messages: list[dict[str, Any]], budget: int,
               keep: int) -> tuple[list[dict[str, Any]], int]:
        return _elide(messages, budget, keep, self._tokens, self._shorten)

    def _size(self, messages: Sequence[dict[str, Any]]) -> int:
        return sum(self._tokens(m) for m in messages)

    def size(self, messages: Sequence[dict[str, Any]]) -> int:
        """Estimated tokens of ``messages`` (unscaled), from the per-message cache."""
        return self._size(messages)

    def _forget(self, messages: Sequence[dict[str, Any]]) -> None:
        """Drop the cache entries of ``messages`` (now covered by the summary), and of the copies
        made of them (elided, or carrying the summary), so the caches hold only what the next
        request can use."""
        for message in messages:
            self._sizes.pop(id(message), None)
            for key in (id(message), -id(message)):
                hit = self._short.pop(key, None)
                if hit is not None and hit[1] is not message:
                    self._sizes.pop(id(hit[1]), None)

    # -- calibration ----------------------------------------------------------------------------
    def estimate(self, messages: Sequence[dict[str, Any]], extra_tokens: int = 0) -> int:
        return int((estimate_tokens(messages) + extra_tokens) * self.scale)

    def observe(self, estimated: int, reported: int) -> None:
        """Calibrate with the provider's prompt tokens for a request we estimated at ``estimated``
        (unscaled)."""
        if estimated > 1000 and reported > 0:
            self.scale = min(3.0, max(0.5, reported / estimated))

    @property
    def breaker_open(self) -> bool:
        return self._clock() < self.open_until

    # -- the request's history ------------------------------------------------------------------
    def history_for_request(
        self,
        history: Sequence[dict[str, Any]],
        budget_tokens: int | None,
        summarise: Summarise | None,
        *,
        fixed_tokens: int = 0,
        force: bool = False,
        count: Callable[[list[dict[str, Any]]], int | None] | None = None,
    ) -> tuple[list[dict[str, Any]], Compaction | None]:
        """The messages to send, and the compaction made now (None if nothing new happened).

        ``fixed_tokens``: the rest of the request (system prompt, tools), counted against the
        budget. ``force``: the provider said the request was too long: summarise all but the last
        turn and elide every older output, whatever the estimate says. ``count``: the provider's
        token count of a whole request with these messages (None when it cannot say); asked once,
        only before a summary the estimate calls for, so a summary call is not made for a request
        that in fact fits (and the estimate is recalibrated with the answer).
        """
        if self.covered > len(history):  # the conversation was reset or replaced
            self.summary, self.covered = None, 0
        if budget_tokens is None:
            return self._assemble(history), None
        budget = max(1, int(budget_tokens / self.scale) - fixed_tokens)
        messages = self._assemble(history)
        before = self._size(messages)
        if before <= budget and not force:
            return messages, None
        keep = 1 if force else KEEP_RECENT_TURNS
        elided, count_elided = self._elide(list(messages), 0 if force else budget, keep)
        if self._size(elided) <= budget and not force:
            made = Compaction(0, before, self._size(elided), 0)
            return elided, self._remember(made, count_elided)
        if count is not None and not force:
            counted = count(elided)
            if counted is not None:
                estimate = self._size(elided) + fixed_tokens
                self.observe(estimate, counted)
                if counted <= budget_tokens:
                    made = Compaction(0, before, self._size(elided), 0)
                    return elided, self._remember(made, count_elided)
        note = ""
        if summarise is None:
            note = "no summariser"
        elif self.breaker_open:
            note = "summaries paused after repeated failures; outputs elided only"
        else:
            folded = self._summarise(history, budget, keep, summarise, force)
            if isinstance(folded, str):
                note = folded
            else:
                messages = self._assemble(history)
                elided, count_elided = self._elide(list(messages), 0 if force else budget, keep)
                made = Compaction(folded, before, self._size(elided),
                                  text_tokens(self.summary or ""))
                return elided, self._remember(made, count_elided)
        made = Compaction(0, before, self._size(elided), 0, note)
        return elided, self._remember(made, count_elided)

    def _remember(self, made: Compaction, elided: int) -> Compaction | None:
        """Record ``made``; return it only if it is news (for the cell and the audit log): a
        summary, a new note, or more turns elided than in the last request."""
        last, grew = self.last, elided > self._elided
        self._elided = elided
        news = made.summarised_turns > 0 or (made.note and (last is None or last.note != made.note))
        if not (news or (grew and not made.note)):
            return None
        self.last, self.compactions = made, self.compactions + 1
        return made

    def _summarise(self, history: Sequence[dict[str, Any]], budget: int, keep: int,
                   summarise: Summarise, force: bool) -> int | str:
        """Fold the oldest turns into the summary; the number of turns, or why not."""
        starts = turn_starts(history, self.covered)
        if len(starts) <= keep:
            return "the recent turns alone fill the budget"
        candidates = starts[1 : len(starts) - keep + 1]  # possible new values of `covered`
        target = int(budget * TARGET_FRACTION)
        cut = candidates[-1]
        if not force:
            rest = self._size(history[candidates[0]:])
            for i, c in enumerate(candidates):  # the smallest cut that brings the rest in target
                if i:
                    rest -= self._size(history[candidates[i - 1] : c])
                if rest <= target:
                    cut = c
                    break
        try:
            summary = summarise(self.summary, history[self.covered : cut])
        except Exception as exc:  # a failed summary must not fail the turn
            self.failures += 1
            if self.failures >= FAILURES_TO_OPEN:
                self.open_until = self._clock() + COOL_DOWN_S
                self.failures = 0
                return (f"the summariser failed {FAILURES_TO_OPEN} times ({exc}); summaries "
                        f"paused for {COOL_DOWN_S:.0f} s, outputs elided only")
            return f"the summariser failed ({exc}); outputs elided only"
        self.failures = 0
        folded = sum(1 for s in starts if self.covered <= s < cut)
        self._forget(history[self.covered : cut])  # only the newly covered: O(turns folded)
        self.summary, self.covered = summary.strip(), cut
        return folded

    def _assemble(self, history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The summary (in the first kept user message), then the history it does not cover."""
        rest = list(history[self.covered :])
        if self.summary is None or not rest:
            return rest
        first = rest[0]
        hit = self._short.get(-id(first))  # the same object while summary and message stay
        if hit is None or hit[0] is not first or hit[1]["content"][0]["text"] != self._header():
            if hit is not None:  # the summary changed: the old copy's size is stale
                self._sizes.pop(id(hit[1]), None)
            block = {"type": "text", "text": self._header()}
            self._short[-id(first)] = (first, {"role": first["role"],
                                               "content": [block, *first["content"]]})
        rest[0] = self._short[-id(first)][1]
        return rest

    def _header(self) -> str:
        return f"{SUMMARY_HEADER}\n{self.summary}"

    def describe(self) -> str:
        """Part of ``%cave context``: what has been compacted."""
        lines = []
        if self.summary is not None:
            lines.append(f"summary: covers the first {self.covered} messages, "
                         f"~{text_tokens(self.summary):,} tokens")
        else:
            lines.append("summary: none yet")
        if self.last is not None:
            lines.append(f"last compaction: {self.last.line()}")
        state = "open (summaries paused)" if self.breaker_open else "closed"
        lines.append(f"summariser circuit breaker: {state}; calibration x{self.scale:.2f}")
        return "\n".join(lines)
