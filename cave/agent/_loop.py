"""The turn loop: run -> step -> query -> execute, until the model answers in text.

It is synchronous on purpose: the kernel runs a whole turn in a worker thread while the cell's
coroutine awaits it, so the kernel keeps serving widget clicks and interrupts meanwhile, and tests
can run a turn with no kernel at all. ``cancel()`` is the one method meant for another thread.

The history stays valid for the Messages API whatever happens: every ``tool_use`` gets a
``tool_result`` (an interrupted step gets one saying so), and a failed first call leaves no
dangling user message.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from .._errors import MaxStepsReached, TurnInterrupted, TurnStopped
from ..models._protocol import Model, ModelReply, ModelRequest, ToolCall, Usage
from ..models._windows import context_window
from . import _budget, _context, _recovery, _summariser
from ._compaction import Compactor, estimate_tokens
from ._events import (
    CodeFinished,
    CodeStarted,
    EventSink,
    ModelCalled,
    Notice,
    TextDelta,
    ToolInputRejected,
    TurnFinished,
)

if TYPE_CHECKING:  # the security package costs ~0.1 s to import; the loop needs only the type
    from ..security._audit import AuditSink


@dataclass(frozen=True)
class AgentSettings:
    """Limits of one turn."""

    max_steps: int = 20
    """Model calls per turn before the turn stops with ``MaxStepsReached``."""
    code_timeout: float | None = 600.0
    """Seconds one code step may run before it is stopped (None: no limit)."""
    max_tokens: int = 8192
    """Output tokens per model call."""
    context_budget_tokens: int | None = 150_000
    """Estimated prompt size above which the request is compacted. The model's context window
    (less the reply's ``max_tokens`` and a 10% margin) caps it; None: that cap alone."""
    context_window: int | None = None
    """The model's context window in tokens; None: known per model (``models._windows``)."""

    def with_limits(self, **changes: Any) -> AgentSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class TurnResult:
    answer: str
    steps: int
    usage: Usage
    duration_s: float


class Runtime(Protocol):
    """What the loop needs from ``cave.runtime.AgentRuntime``."""

    def manifest(self, *, variables: bool = ...) -> str: ...
    def agent_variables(self, *, last: int | None = ...) -> list[tuple[str, str]]: ...
    def run(
        self, code: str, *, timeout: float | None = ..., echo: bool = ..., label: str = ...
    ) -> Any: ...
    def interrupt(self) -> None: ...


class _NullAudit:
    def record(self, kind: str, /, **fields: Any) -> None:
        pass


class Agent:
    """One conversation with one model over one runtime."""

    def __init__(
        self,
        runtime: Runtime,
        model: Model,
        *,
        settings: AgentSettings | None = None,
        history: list[dict[str, Any]] | None = None,
        primitives_doc: str = "",
        audit: AuditSink | None = None,
        code_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        echo: bool = True,
        skills_doc: str = "",
        instructions: str = "",
        budget: _budget.Budget | None = None,
        totals: _budget.Totals | None = None,
        compactor: Compactor | None = None,
        retry: _recovery.RetryPolicy | None = None,
    ) -> None:
        """``budget``/``totals``/``compactor`` are the session's (they outlive the turn)."""
        self.runtime = runtime
        self.skills_doc = skills_doc
        """The skills listing for the cached part of the system prompt (``cave.skills``)."""
        self.instructions = instructions
        """A sub-agent's role, given when it was made."""
        self.model = model
        self.settings = settings or AgentSettings()
        self.history: list[dict[str, Any]] = history if history is not None else []
        self.primitives_doc = primitives_doc
        self.audit: AuditSink = audit or _NullAudit()
        self.code_context = code_context or contextlib.nullcontext
        self.echo = echo
        self._cancelled = threading.Event()
        self._sink: EventSink = lambda event: None
        self._usage = Usage()
        self.budget = budget or _budget.Budget.NONE
        self.totals = totals if totals is not None else _budget.Totals()
        self.compactor = compactor or Compactor()
        self.retry = retry or _recovery.RetryPolicy()
        self._estimate = 0
        self._by_agent: dict[str, Usage] = {}
        self._charge_lock = threading.Lock()

    def charge(self, who: str, usage: Usage) -> None:
        """Usage spent for this turn by someone else (a sub-agent its code asked): it counts in
        the turn's total (the footer, a budget) and is shown per agent."""
        with self._charge_lock:
            self._usage += usage
            self._by_agent[who] = self._by_agent.get(who, Usage()) + usage
            self.totals.usage += usage

    # -- the loop ---------------------------------------------------------------------------
    def run(self, prompt: str, on_event: EventSink | None = None) -> TurnResult:
        self._sink, self._usage = on_event or (lambda e: None), Usage()
        self._by_agent = {}
        start, mark, step, stopped = time.perf_counter(), len(self.history), 0, None
        answer: str | None = None
        self.totals.turns += 1
        names = self.runtime.agent_variables(last=_context.SHOWN_VARIABLES + 1)
        self._append_user(_context.user_prompt(prompt, names))
        try:
            for step in range(1, self.settings.max_steps + 1):
                answer = self.step(step)
                if answer is not None:
                    return TurnResult(answer, step, self._usage, time.perf_counter() - start)
            raise MaxStepsReached(self.settings.max_steps)
        except TurnStopped as stop:
            stopped = type(stop).__name__
            self._close_history(f"[This turn was stopped: {stop}]")
            raise
        except BaseException:
            if step <= 1 and len(self.history) == mark + 1:  # nothing happened: forget the prompt
                del self.history[mark:]
            stopped = "error"
            raise
        finally:
            self.audit.record(
                "turn",
                prompt=prompt[:2000],
                steps=step,
                stopped=stopped,
                **_usage_fields(self._usage),
            )
            self._sink(
                TurnFinished(
                    answer or "",
                    step,
                    self._usage,
                    time.perf_counter() - start,
                    self.model.name,
                    stopped,
                    tuple(self._by_agent.items()),
                    _budget.footer(self.budget, self.totals),
                )
            )

    def step(self, step: int) -> str | None:
        """One model call and the code it asks for; the answer text when the turn is over."""
        reply = self.query(step)
        self.history.append({"role": "assistant", "content": reply.content})  # never empty
        if not reply.tool_calls:
            return reply.text
        results = []
        for call in reply.tool_calls:
            try:
                results.append(self.execute(step, call))
            except TurnInterrupted:
                done = {r["tool_use_id"] for r in results}
                results += [
                    _tool_result(c.id, "Interrupted by the user.", error=True)
                    for c in reply.tool_calls
                    if c.id not in done
                ]
                self._append_user(results)
                raise
        self._append_user(results)
        return None

    def query(self, step: int) -> ModelReply:
        """One model call at a step boundary: budgets checked, faults survived (``_recovery``)."""
        self._check_cancelled(step)
        _budget.check(self.budget, turn_steps=step - 1, turn=self._usage, session=self.totals)
        t0 = time.perf_counter()
        try:
            reply = _recovery.query(
                self.model, lambda force: self.request(step, force),
                lambda text: self._sink(TextDelta(step, text)),
                lambda text: self._sink(Notice(step, text)), self._cancelled, step, self.retry)
        except TurnInterrupted:
            raise TurnInterrupted(step) from None
        self._count(reply, step, "model_call")
        u = reply.usage
        if reply.calls == 1:  # a continued reply's input tokens add up several requests
            self.compactor.observe(self._estimate,
                                   u.input_tokens + u.cache_read_tokens + u.cache_write_tokens)
        self._sink(
            ModelCalled(step, reply.model or self.model.name, reply.usage, time.perf_counter() - t0)
        )
        return reply

    def request(self, step: int, force: bool = False) -> ModelRequest:
        """The next request: system prompt, manifest, and the history compacted to fit."""
        system = _context.system_blocks(
            self.primitives_doc, self.runtime.manifest(variables=False),
            skills=self.skills_doc, instructions=self.instructions,
        )
        fixed = estimate_tokens([{"s": system, "t": _context.TOOLS}])
        history, made = self.compactor.history_for_request(
            self.history, self.context_budget(),
            lambda prev, msgs: self._summarise(step, prev, msgs), fixed_tokens=fixed, force=force,
            count=lambda msgs: self._count_tokens(system, msgs))
        if made is not None:
            self.audit.record("compaction", step=step, summarised_turns=made.summarised_turns,
                              tokens_before=made.tokens_before, tokens_after=made.tokens_after,
                              forced=force, note=made.note)
            self._sink(Notice(step, made.line()))
        self._estimate = fixed + self.compactor.size(history)
        return _context.build_request(system=system, history=history,
                                      max_tokens=self.settings.max_tokens)

    def context_budget(self) -> int:
        return context_budget(self.settings, self.model.name)[0]

    def _count_tokens(self, system: Any, messages: list[dict[str, Any]]) -> int | None:
        """The provider's count for a request, when the model has a counting endpoint."""
        count = getattr(self.model, "count_tokens", None)
        if not callable(count):
            return None
        try:
            return int(count(_context.build_request(system=system, history=messages,
                                                    max_tokens=self.settings.max_tokens)))
        except Exception:  # optional: the estimate decides
            return None

    def _summarise(self, step: int, previous: str | None, messages: Any) -> str:
        summary, reply = _summariser.summarise(self.model, previous, messages)
        self._count(reply, step, "summary_call")
        return summary

    def _count(self, reply: ModelReply, step: int, kind: str) -> None:
        """Add a call's usage to the turn and the session, and audit it."""
        with self._charge_lock:
            self._usage += reply.usage
            self.totals.usage += reply.usage
        self.totals.steps += kind == "model_call"
        self.audit.record(kind, step=step, model=reply.model or self.model.name,
                          stop_reason=reply.stop_reason, **_usage_fields(reply.usage))

    def execute(self, step: int, call: ToolCall) -> dict[str, Any]:
        self._check_cancelled(step)
        if call.code is None:
            self._sink(ToolInputRejected(step, call.error or "unusable input"))
            return _tool_result(call.id, f"Tool input rejected: {call.error}", error=True)
        self._sink(CodeStarted(step, call.code))
        with self.code_context():
            result = self.runtime.run(
                call.code, timeout=self.settings.code_timeout, echo=self.echo, label=f"step-{step}"
            )
        self.audit.record(
            "code",
            step=step,
            code=call.code,
            error=result.error,
            timed_out=result.timed_out,
            interrupted=result.interrupted,
            duration_s=round(result.duration_s, 6),
        )
        self._sink(CodeFinished(step, call.code, result))
        if result.interrupted or self._cancelled.is_set():
            raise TurnInterrupted(step)
        return _tool_result(call.id, result.for_model(), error=result.error is not None)

    # -- control from other threads ----------------------------------------------------------
    def cancel(self) -> None:
        """Stop the running turn as soon as possible (the kernel's stop button)."""
        self._cancelled.set()
        self.model.cancel()
        self.runtime.interrupt()

    @property
    def cancelled(self) -> threading.Event:
        return self._cancelled

    # -- history bookkeeping -----------------------------------------------------------------
    def _check_cancelled(self, step: int) -> None:
        if self._cancelled.is_set():
            raise TurnInterrupted(step)

    def _append_user(self, blocks: list[dict[str, Any]]) -> None:
        """Add user content, merging into a trailing user message (the API wants alternation)."""
        if self.history and self.history[-1]["role"] == "user":
            self.history[-1] = {"role": "user", "content": [*self.history[-1]["content"], *blocks]}
        else:
            self.history.append({"role": "user", "content": list(blocks)})

    def _close_history(self, note: str) -> None:
        """Leave a stopped turn so the next one can continue it."""
        last = self.history[-1] if self.history else None
        if last and last["role"] == "assistant":
            pending = [b["id"] for b in last["content"] if b.get("type") == "tool_use"]
            self._append_user(
                [_tool_result(i, "Not run: the turn was stopped.", error=True) for i in pending]
            )
        self._append_user([{"type": "text", "text": note}])


def context_budget(settings: AgentSettings, model_name: str) -> tuple[int, int]:
    """(tokens above which a request is compacted, the model's context window)."""
    window = settings.context_window or context_window(model_name)
    cap = int(window * 0.9) - settings.max_tokens
    budget = settings.context_budget_tokens
    return (cap if budget is None else min(budget, cap)), window


def _tool_result(tool_use_id: str, text: str, *, error: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": tool_use_id,
        "content": [{"type": "text", "text": text}],
    }
    if error:
        block["is_error"] = True
    return block


def _usage_fields(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cost_usd": usage.cost_usd,
    }
