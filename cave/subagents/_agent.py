"""``SubAgent`` (``cave.Agent``): a sub-agent, with its own namespace and conversation.

Its authority is a sub-session of the security vault attenuated against its parent's
(``cave.security._attenuation`` states the exact semantics), so whatever its code does, through
primitives or raw Python, is checked against *its* policy met with its parent's; its asks reach
the same approval queue, labelled with its name.

How a sub-agent runs, and why:

* ``ask`` runs the sub-agent's turn in the calling thread (a user cell, or the parent agent's
  code step). Each of its code steps runs inside its own ``agent_code()`` block; when the caller
  is the parent's code, the guard switches that thread to the sub-agent's (narrower) session
  for the step and back after it.
* Its model calls must not be checked against the parent's policy (the parent's code is
  guarded, and the model endpoint is Cave's business, not the agent's), so from agent code they
  go through the vault operation ``agents.query``, which runs the call on a thread that is not
  agent code. It takes only plain data (dicts, lists, strings, numbers) and the sub-agent's
  handle, and the handle must belong to a sub-agent of the calling session: agent code cannot
  run anything of its own there.
* Usage is charged to the running top-level turn (the footer's accounting), per agent name, so
  the footer shows per-agent and total tokens and cost, and a budget on the turn covers it.

Not protected: agent code that holds a sub-agent object can reach its Python attributes (its
runtime, its history, its model client), as it can reach the session's own through ``cave``.
That gives no authority: the policy and grants live in the vault.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterable
from typing import Any

from .._errors import ConfigError, RuntimeStateError
from ..models._protocol import Model, ModelReply, ModelRequest, Usage
from ._registry import attached, registry_for

__all__ = ["SubAgent", "plain"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
STOP_WAIT_S = 10.0
"""How long a stopped sub-agent's turn is interrupted again and again until it ends."""


def plain(value: Any, depth: int = 0) -> Any:
    """A copy made only of exact builtins (no subclass, no agent-defined method runs on it)."""
    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return value
    if depth > 64:
        raise ValueError("nested too deeply")
    if kind is dict:
        out = {}
        for k, v in dict.items(value):
            if type(k) is not str:
                raise TypeError("keys must be str")
            out[k] = plain(v, depth + 1)
        return out
    if kind in (list, tuple):
        return [plain(v, depth + 1) for v in (list.__iter__(value) if kind is list
                                              else tuple.__iter__(value))]
    raise TypeError(f"{kind.__name__} is not plain data")


class _Sink:
    """Events of a sub-agent's turn: nested, collapsible blocks in the running cell."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, event: Any) -> None:
        from ..agent._events import CodeFinished, CodeStarted, TurnFinished

        if isinstance(event, CodeStarted):
            _show_code(self.name, event.step, event.code)
        elif isinstance(event, CodeFinished) and event.result.error:
            print(f"[{self.name}] {event.result.error}")
        elif isinstance(event, TurnFinished):
            _show_footer(self.name, event)


def _show_code(name: str, step: int, code: str) -> None:
    import html

    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython is a dependency
        return
    escaped = html.escape(code)
    display(
        {
            "text/html": (
                '<details class="cave-subagent" style="margin-left:1.5em;border-left:2px solid '
                '#ccc;padding-left:0.5em"><summary style="cursor:pointer;color:#666">'
                f"sub-agent {html.escape(name)} &middot; step {step}</summary>"
                f"<pre><code class=\"language-python\">{escaped}</code></pre></details>"
            ),
            "text/plain": f"  --- sub-agent {name} (step {step}) ---\n  "
            + code.replace("\n", "\n  "),
        },
        raw=True,
    )


def _show_footer(name: str, event: Any) -> None:
    u = event.usage
    text = (
        f"sub-agent {name}: {event.steps} steps · {u.input_tokens:,} in / "
        f"{u.output_tokens:,} out"
    )
    if u.cost_usd is not None:
        text += f" · ${u.cost_usd:.4f}"
    if event.stopped:
        text += f" · stopped ({event.stopped})"
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover
        return
    display(
        {
            "text/html": f'<div style="margin-left:1.5em;color:#888;font-size:85%">{text}</div>',
            "text/plain": f"  [{text}]",
        },
        raw=True,
    )


class _VaultModel:
    """The sub-agent's model, called through the vault when the caller is agent code."""

    def __init__(self, agent: SubAgent) -> None:
        self._agent = agent
        self.name = agent._model.name

    def query(self, request: ModelRequest, on_text: Any = None) -> ModelReply:
        from ..security._guard import _ask
        from ..security._primitives import _call

        if not _ask("is_agent", ()):
            return self._agent._model.query(request)
        data = plain(
            {
                "system": list(request.system),
                "messages": list(request.messages),
                "tools": list(request.tools),
                "max_tokens": request.max_tokens,
            }
        )
        reply: ModelReply = _call(
            self._agent._parent_handle, "agents.query", (self._agent._handle, data)
        )
        return reply

    def cancel(self) -> None:
        self._agent._model.cancel()


class _VaultAudit:
    """The sub-agent's audit records. From agent code (a sub-agent asked by its parent's code)
    they go through the vault operation ``agents.audit``, which writes them as
    ``subagent.KIND`` records naming the sub-agent: what the loop reports (turns, model calls,
    code run) comes from the calling thread, as the main loop's does; decisions are recorded by
    the vault itself."""

    def __init__(self, agent: SubAgent) -> None:
        self._agent = agent

    def record(self, kind: str, /, **fields: Any) -> None:
        from ..security._guard import _ask
        from ..security._primitives import _call

        agent = self._agent
        if _ask("is_agent", ()):
            _call(agent._parent_handle, "agents.audit", (agent._handle, kind, plain(fields)))
        elif agent._session.audit is not None:
            agent._session.audit.record(f"subagent.{kind}", agent=agent.name, **fields)


class _SubAgentRef:
    """What a checkpoint holds for a variable bound to a sub-agent: its name. After a restore
    it forwards to the sub-agent of that name in the restoring session."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _target(self) -> SubAgent:
        registry = attached()
        agent = registry.get(self._name) if registry is not None else None
        if agent is None:
            raise RuntimeStateError(f"sub-agent {self._name!r} is not in this session")
        return agent

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._target(), attr)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_SubAgentRef, (self._name,))

    def __repr__(self) -> str:
        return f"<cave.Agent {self._name!r} (restored reference)>"


class SubAgent:
    """A sub-agent (``cave.Agent`` makes one for the current session; see there).

    ``policy``: a list of capability patterns it may use (everything else is denied), or a
    ``cave.security.Policy``; either way it never exceeds what its parent holds. ``model``: a
    model name, a ``Model`` object, or None for the session's model. Use ``ask(prompt)``,
    ``inject(name, obj)`` and ``retrieve(name)``; the agent's own code gets the ``agents.spawn``
    primitive instead (which asks a person).
    """

    def __init__(
        self,
        session: Any,
        name: str,
        *,
        model: str | Model | None = None,
        policy: Iterable[str] | Any = None,
        instructions: str = "",
    ) -> None:
        security = session.ensure_security()
        if security is None:
            raise ConfigError("Sub-agents need the security layer; this session runs without it.")
        registry = registry_for(session)
        _check_name(name, registry)
        try:
            child = security.spawn(name, policy)
        except PermissionError:
            raise PermissionError(
                "cave.Agent(...) cannot be created from agent code: use "
                "agents.spawn(name, policy=[...]) (a person approves it)"
            ) from None
        registry.extend_child(child)
        self._setup(session, name, child, security.handle, model, instructions, policy)

    @classmethod
    def _spawned(
        cls, session: Any, name: str, child: Any, parent_handle: object, model: Any,
        instructions: str, policy: Any,
    ) -> SubAgent:
        self = cls.__new__(cls)
        self._setup(session, name, child, parent_handle, model, instructions, policy)
        return self

    def _setup(
        self, session: Any, name: str, child: Any, parent_handle: object, model: Any,
        instructions: str, policy: Any,
    ) -> None:
        from ..runtime._namespace import AgentRuntime

        self.name = name
        self.instructions = str(instructions or "")
        self.given = [str(p) for p in policy] if isinstance(policy, (list, tuple)) else policy
        self._session = session
        self._security = child
        self._handle = child.handle
        self._parent_handle = parent_handle
        self._model_spec = model if isinstance(model, str) else None
        self._model: Model = _resolve_model(session, model)
        self.runtime = AgentRuntime()
        self.history: list[dict[str, Any]] = []
        self.usage = Usage()
        self._lock = threading.Lock()
        self._stopping = False
        """A stop was asked for the running turn: the next ``ask`` waits for it to unwind."""
        self._loop: Any = None
        registry = registry_for(session)
        registry.add(self)
        for prim_name, primitive in child.primitives.items():
            self.runtime.add_primitive(prim_name, primitive)

    # -- the runtime stream ----------------------------------------------------------------
    def inject(self, name: str, obj: Any, description: str | None = None) -> None:
        """Bind ``obj`` itself into this sub-agent's namespace."""
        self.runtime.inject(name, obj, description)

    def retrieve(self, name: str) -> Any:
        """The live object this sub-agent's namespace holds under ``name``."""
        return self.runtime.retrieve(name)

    # -- turns -----------------------------------------------------------------------------
    def ask(self, prompt: str, *, max_steps: int | None = None) -> str:
        """Run one turn of this sub-agent; returns its answer text. In a notebook cell prefer
        ``await sub.ask_async(...)``: a cell that blocks cannot receive approval-widget clicks
        (answer from a terminal then: ``cave approvals approve ID``)."""
        from ..agent._loop import Agent as Loop

        if not self._lock.acquire(blocking=False) and not self._after_stop():
            raise RuntimeStateError(
                f"sub-agent {self.name!r} is already running a turn; wait for it to answer"
            )
        try:
            settings = self._session.agent_settings.with_limits(max_steps=max_steps)
            loop = Loop(
                self.runtime,
                _VaultModel(self),
                settings=settings,
                history=self.history,
                primitives_doc=self._security.describe_primitives(),
                audit=_VaultAudit(self),
                code_context=self._security.agent_code,
                instructions=self.instructions,
            )
            self._loop = loop
            sink = _Sink(self.name)
            try:
                result = loop.run(str(prompt), sink)
            finally:
                self._loop = None
                spent = loop._usage
                self.usage = self.usage + spent
                top = getattr(self._session, "_active", None)
                if top is not None and hasattr(top, "charge"):
                    top.charge(self.name, spent)
            return result.answer
        finally:
            self._stopping = False
            self._lock.release()

    def _after_stop(self) -> bool:
        """Take the turn lock once a stopped turn has unwound (it may still be unwinding when
        the next cell starts); False if the running turn was not stopped."""
        # Not the turn's ``_loop``: it is cleared just before the lock is let go, and a next
        # ``ask`` that comes in between must still wait.
        if not self._stopping:
            return False
        return self._lock.acquire(timeout=STOP_WAIT_S)

    async def ask_async(self, prompt: str) -> str:
        """``await sub.ask_async(...)``: the same turn, in a worker thread."""
        import asyncio

        return await asyncio.to_thread(self.ask, prompt)

    def cancel(self) -> None:
        """Stop this sub-agent's running turn (the stop button stops the whole tree)."""
        loop = self._loop
        if loop is None:
            return
        self._stopping = True  # cleared when the turn lets go of its lock
        loop.cancel()
        self._security.cancel_pending()  # its asks waiting for a person
        # A stop that lands between the step's start and its code running finds nothing to
        # interrupt yet: keep interrupting until this turn is over (at most STOP_WAIT_S).
        threading.Thread(
            target=self._interrupt_until_over, args=(loop,), name="cave-subagent-stop",
            daemon=True,
        ).start()

    def _interrupt_until_over(self, loop: Any) -> None:
        import time

        deadline = time.monotonic() + STOP_WAIT_S
        while self._loop is loop and time.monotonic() < deadline:
            self.runtime.interrupt()
            time.sleep(0.05)

    @property
    def policy(self) -> Any:
        """A copy of this sub-agent's own policy (before meeting its parent's)."""
        return self._security.policy

    def __repr__(self) -> str:
        return f"<cave.Agent {self.name!r}: {len(self.runtime.agent_variables())} variables>"

    def __reduce__(self) -> tuple[Any, ...]:
        # A checkpoint carries sub-agents whole (``_checkpoint``); a variable holding one
        # carries its name.
        return (_SubAgentRef, (self.name,))

    # -- checkpoints -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: name, settings, policy and grants, conversation, namespace."""
        import cloudpickle

        objects: dict[str, str] = {}
        problems: dict[str, str] = {}
        skip = set(self.runtime.primitives) | {"exit", "quit"}
        for key, value in self.runtime.namespace.items():
            if key.startswith("__") or key in skip:
                continue
            try:
                objects[key] = base64.b64encode(cloudpickle.dumps(value)).decode()
            except Exception as exc:  # one bad object must not spoil the rest
                problems[key] = f"{type(exc).__name__}: {exc}"[:300]
        return {
            "name": self.name,
            "instructions": self.instructions,
            "model": self._model_spec,
            "given": self.given if isinstance(self.given, list) else None,
            "security": self._security.snapshot(),
            "history": self.history,
            "injected": {
                n: i.description for n, i in self.runtime.injected.items()
            },
            "objects": objects,
            "problems": problems,
        }


def _check_name(name: Any, registry: Any) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"A sub-agent name must start with a letter and hold up to 64 letters, digits, '-' "
            f"or '_', like 'cleaner'; got {name!r}."
        )
    if registry.get(name) is not None:
        raise ConfigError(
            f"There is already a sub-agent named {name!r} in this session; pick another name."
        )


def _resolve_model(session: Any, model: Any) -> Model:
    if model is None:
        resolved: Model = session.model
        return resolved
    if isinstance(model, str):
        return registry_for(session).build_model(model)
    if not hasattr(model, "query"):
        raise ConfigError(f"model= takes a model name or a Model object, not {model!r}")
    return model
