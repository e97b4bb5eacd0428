"""A Cave session: one agent runtime, one conversation, one model, and their settings.

The kernel holds exactly one session; outside a kernel (scripts, tests, terminal IPython) the first
call to ``cave.inject`` creates one. Everything a checkpoint must carry hangs off this object.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._env import MODEL_ENV, SCRIPT_ENV, session_dir
from ._errors import ConfigError
from .agent._events import EventSink
from .agent._loop import Agent, AgentSettings, TurnResult
from .models._protocol import Model

if TYPE_CHECKING:
    from .approvals._protocol import ApprovalChannel
    from .security import Security
    from .security._audit import ChainedAuditSink


@dataclass(frozen=True)
class ModelSettings:
    """Which model the session talks to."""

    name: str | None = None
    """Model id; None means the provider's default (``AnthropicModel.DEFAULT_MODEL``)."""
    base_url: str | None = None
    """Another endpoint: Anthropic-compatible, or OpenAI-compatible for ``openai:`` model names."""

    def with_name(self, name: str | None) -> ModelSettings:
        return replace(self, name=name)

    def with_base_url(self, base_url: str | None) -> ModelSettings:
        return replace(self, base_url=base_url)


def model_from_settings(settings: ModelSettings) -> Model:
    """Build the model for ``settings``; ``CAVE_SCRIPT`` selects the scripted fixture instead."""
    script = os.environ.get(SCRIPT_ENV)
    if script:
        from .testing._script import load_script
        from .testing._scripted_model import ScriptedModel

        return ScriptedModel(load_script(script), name="scripted (test fixture)")
    from .models._anthropic import DEFAULT_MODEL, AnthropicModel

    name = settings.name or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    from .models._openai_compat import is_openai_name, model_from_name

    if is_openai_name(name):
        return model_from_name(name, settings.base_url)
    if name.startswith("scripted"):
        raise ConfigError(
            f"Model {name!r} is a test fixture: set {SCRIPT_ENV}=/path/script.json, or pass a "
            "ScriptedModel to cave.set_model()."
        )
    return AnthropicModel(name, base_url=settings.base_url)


class Session:
    """The runtime, the conversation and the model, owned together."""

    def __init__(
        self,
        *,
        workspace: Path | None = None,
        model: Model | None = None,
        model_settings: ModelSettings | None = None,
        agent_settings: AgentSettings | None = None,
        channel_factory: Callable[[Session], Any] | None = None,
        secure: bool = True,
    ) -> None:
        from .runtime._namespace import AgentRuntime

        self.workspace = Path(workspace or os.getcwd()).resolve()
        self.runtime = AgentRuntime()
        self.model_settings = model_settings or ModelSettings()
        self.agent_settings = agent_settings or AgentSettings()
        self.history: list[dict[str, Any]] = []
        self._model = model
        self._lock = threading.Lock()
        self._active: Agent | None = None
        self.primitives_doc = ""
        self.audit: ChainedAuditSink | None = None
        self.code_context: Callable[[], Any] | None = None
        self.security: Security | None = None
        """``cave.security.Security``, built on the first turn (``ensure_security``)."""
        self.approvals: ApprovalChannel | None = None
        """The approval channel the security layer asks through."""
        self._channel_factory = channel_factory
        self._secure = secure
        self.before_turn: list[Callable[[Session], None]] = []
        """Called at the start of each turn, in the turn's thread, after ``ensure_security``."""
        from ._data_grants import grant_injected_schedulers

        self.before_turn.append(grant_injected_schedulers)  # issue 13: the Dask policy
        self.after_turn: list[Callable[[Session, bool], None]] = []
        """Called with (session, completed) when a turn ends, in the turn's thread, still holding
        the turn lock (auto-checkpoints). A hook that raises is reported on stderr; it never
        replaces the turn's result or error."""
        self.tools: Any = None
        """``cave.tools``' registry of TypeScript tools, attached with the security layer."""
        self.state_parts: dict[str, tuple[Callable[[], Any], Callable[[Any], Callable[[], Any]]]]
        self.state_parts = {}
        """Extra JSON state a checkpoint carries (tools, skills, sub-agents): name -> (capture,
        prepare). ``prepare(saved)`` raises ValueError on bad data (the restore then changes
        nothing) and returns the step that applies it; a step may return a list of ``Problem``
        (what it could not bring back, reported, not fatal)."""
        self.skills: Any = None
        """``cave.skills.SkillRegistry``, discovered when the security layer is built."""
        self.subagents: Any = None
        """``cave.subagents._registry.SubAgents``: the sub-agents made in this session."""
        from .agent._budget import Budget, Totals
        from .agent._compaction import Compactor

        self.budget = Budget()
        """Limits per turn and per session (``%cave budget``); saved with checkpoints."""
        self.totals = Totals()
        """What this session has spent; saved with checkpoints."""
        self.compactor = Compactor()
        """The conversation's summary and compaction state (requests only; history is whole)."""
        self.mode = "guard"
        """Where agent code runs: ``"guard"`` (the kernel) or ``"strict"`` (a confined worker);
        change it with :meth:`set_mode`."""
        from .strict._process import StrictSettings

        self.strict_settings = StrictSettings()
        """Limits of the strict-mode worker (per-step memory, stop grace period)."""
        self.checkpoint_store: str | None = None
        """Where checkpoints go: a directory or fsspec URL; None means ``$CAVE_CHECKPOINTS`` or
        ``<directory>/checkpoints``."""

    @property
    def directory(self) -> Path:
        """The session directory, created on first use with mode 0700 (it holds the audit log)."""
        path = session_dir(workspace=self.workspace)
        if not path.exists():
            path.mkdir(parents=True, mode=0o700)
        return path

    # -- model ------------------------------------------------------------------------------
    @property
    def model(self) -> Model:
        """The model, built on first use so a missing key surfaces in the first agent cell."""
        if self._model is None:
            self._model = model_from_settings(self.model_settings)
        return self._model

    def set_model(
        self, model: Model | None = None, *, settings: ModelSettings | None = None
    ) -> None:
        """Use ``model`` (or rebuild from ``settings`` on next use)."""
        if settings is not None:
            self.model_settings = settings
        self._model = model

    def use_endpoint(self, base_url: str | None, *, model: str | None = None) -> None:
        """Talk to an Anthropic-compatible endpoint (gateway, proxy, the loopback test server)."""
        settings = self.model_settings.with_base_url(base_url)
        if model is not None:
            settings = settings.with_name(model)
        self.set_model(settings=settings)

    def model_configured(self) -> bool:
        """Whether a turn could reach a model: a model object, an endpoint, a key or a script."""
        if self._model is not None or self.model_settings.base_url or os.environ.get(SCRIPT_ENV):
            return True
        from .models._credentials import get_key, route

        name = self.model_settings.name or os.environ.get(MODEL_ENV) or ""
        if name.startswith("openai"):
            return bool(get_key("openai") or os.environ.get("OPENAI_BASE_URL") or route("openai"))
        return bool(
            get_key("anthropic")
            or route("anthropic")
            or route("anthropic_auth_token")
            or os.environ.get("ANTHROPIC_API_KEY")
            or os.environ.get("ANTHROPIC_BASE_URL")
        )

    # -- authority --------------------------------------------------------------------------
    def ensure_security(self) -> Any:
        """Build the authority layer once: audit log, policy, approval channel, primitives, guard.

        Lazy so that kernel start-up pays nothing for it; every agent turn calls it first.
        """
        if self.security is not None or not self._secure:
            return self.security
        from .security import AuditLog, Security, load_policy

        policy = load_policy(self.workspace)
        if self.audit is None:
            self.audit = AuditLog(self.directory / AUDIT_FILE)
        if self.approvals is None:
            self.approvals = (self._channel_factory or default_channel)(self)
        self.security = Security(
            workspace=self.workspace,
            policy=policy,
            channel=self.approvals,
            audit=self.audit,
            session_dir=self.directory,
            exec_marker="<cave-",
        )
        from .skills._attach import attach as attach_skills
        from .subagents._primitive import attach as attach_agents

        attach_skills(self, self.security)
        attach_agents(
            self,
            self.security,
            lambda name: model_from_settings(self.model_settings.with_name(name)),
        )
        for name, primitive in self.security.primitives.items():
            self.runtime.add_primitive(name, primitive)
        self.code_context = self.security.agent_code
        self.primitives_doc = self.security.describe_primitives()
        from .tools._hook import attach_tools

        attach_tools(self)
        return self.security

    def set_mode(self, mode: str) -> None:
        """Switch to ``"strict"`` or ``"guard"``; strict raises (with the reason) if it cannot be
        enforced here, and the mode stays as it was."""
        from .strict._mode import MODES, enter_strict, leave_strict

        if mode not in MODES:
            raise ConfigError(f"Unknown mode {mode!r}: use one of {', '.join(MODES)}.")
        with self.exclusive(f"switch to {mode} mode"):
            if mode == "strict":
                enter_strict(self)
            else:
                leave_strict(self)
            self.mode = mode

    # -- turns ------------------------------------------------------------------------------
    def ask(
        self,
        prompt: str,
        on_event: EventSink | None = None,
        *,
        settings: AgentSettings | None = None,
        echo: bool = True,
        budget: Any = None,
    ) -> TurnResult:
        """Run one turn in the calling thread. One turn at a time per session. ``budget``: this
        turn's limits instead of the session's (``%%agent --max-cost``)."""
        with self.exclusive("run the next agent cell"):
            return self._turn(prompt, on_event, settings=settings, echo=echo, budget=budget)

    def _turn(self, prompt: str, on_event: EventSink | None, *,
              settings: AgentSettings | None, echo: bool, budget: Any = None) -> TurnResult:
        completed = False
        try:
            self.ensure_security()
            code_context = self.code_context
            if self.mode != "guard":  # no silent fallback: start the worker or fail the turn
                from .strict._mode import MODES, enter_strict

                if self.mode not in MODES:
                    raise ConfigError(f"Mode {self.mode!r} is not a mode: `%cave mode strict` or "
                                      "`%cave mode guard` (c.CaveKernel.mode, cave.toml mode).")
                enter_strict(self)
                code_context = None  # the broker enters the guard for each request instead
            self._run_hooks(self.before_turn)
            agent = Agent(
                self.runtime,
                self.model,
                settings=settings or self.agent_settings,
                history=self.history,
                primitives_doc=self.primitives_doc,
                audit=self.audit,
                code_context=code_context,
                echo=echo,
                skills_doc=self.skills.listing() if self.skills is not None else "",
                budget=budget or self.budget,
                totals=self.totals,
                compactor=self.compactor,
            )
            self._active = agent
            result = agent.run(prompt, on_event)
            completed = True
            return result
        finally:
            self._active = None
            self._run_hooks(self.after_turn, completed)

    def _run_hooks(self, hooks: list[Callable[..., None]], *args: Any) -> None:
        for hook in list(hooks):
            try:
                hook(self, *args)
            except Exception as exc:  # a hook must never cost the turn its result
                print(f"[cave] {getattr(hook, '__name__', hook)!s} failed: {exc}", file=sys.stderr)

    @contextlib.contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """Hold the turn lock for ``what`` (a restore): no turn runs meanwhile, none is running."""
        if not self._lock.acquire(blocking=False):
            raise ConfigError(
                f"An agent turn is running in this session; wait for it or stop it, then {what}."
            )
        try:
            yield
        finally:
            self._lock.release()

    def cancel(self) -> bool:
        """Stop the running turn, if any (safe from any thread). True if there was one."""
        # The stop button stops the whole tree, also sub-agents a user cell is running. The
        # session's turn first: a sub-agent stopped before it returns to its parent's code, whose
        # step then ends with an ordinary error, and a parent not yet cancelled would go on to
        # its next model request.
        agent = self._active
        if agent is not None:
            agent.cancel()
        subagents = self.subagents.cancel_all() if self.subagents is not None else 0
        if agent is None:
            return subagents > 0
        if self.security is not None:
            self.security.cancel_pending()
        return True

    @property
    def busy(self) -> bool:
        return self._active is not None

    def reset_conversation(self) -> None:
        """Forget the conversation; the runtime (the memory that matters) is untouched."""
        from .agent._compaction import Compactor

        self.history.clear()
        self.compactor = Compactor()


AUDIT_FILE = "audit.jsonl"


def default_channel(session: Session) -> Any:
    """Outside the kernel: ask on the terminal if there is one, else wait for `cave approvals`."""
    if sys.stdin is not None and sys.stdin.isatty():
        from .approvals._console import ConsoleChannel

        return ConsoleChannel()
    from .approvals._session_channel import make_channel

    return make_channel(session)


_current: Session | None = None
_factory: Callable[[], Session] = Session
_current_lock = threading.Lock()


def current_session() -> Session:
    """The process's session, created on first use (so kernel start-up pays nothing for it)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = _factory()
        return _current


def peek_session() -> Session | None:
    """The session if one exists, without creating it."""
    return _current


def set_session_factory(factory: Callable[[], Session]) -> None:
    """How ``current_session`` builds the session (the kernel passes its configuration here)."""
    global _factory
    with _current_lock:
        _factory = factory


def set_current_session(session: Session | None) -> None:
    global _current
    with _current_lock:
        _current = session
