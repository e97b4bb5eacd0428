"""Cave: a Jupyter kernel in which an LLM operates a persistent Python runtime, under authority.

The public API is small: put live objects into the agent's namespace and take results out, pick the
model, and reach the session. Everything else is reached through the kernel's magics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import (
    ApprovalError,
    AuditChainBroken,
    AuthorityError,
    BudgetReached,
    CaveError,
    CheckpointError,
    CheckpointNotFound,
    CheckpointTampered,
    ConfigError,
    EmptyModelReply,
    MaxStepsReached,
    MissingAPIKey,
    ModelError,
    ModelResponseError,
    NameNotFound,
    PolicyFileError,
    RuntimeStateError,
    SkillError,
    StrictModeUnavailable,
    ToolError,
    TurnInterrupted,
    TurnStopped,
    TypeChangeRefused,
)

if TYPE_CHECKING:
    from . import tools
    from ._session import Session
    from ._subagent import Agent
    from .models import Model

__version__ = "0.1.0"


def inject(name: str, obj: Any, description: str | None = None) -> None:
    """Bind ``obj`` itself (not a copy) into the agent's namespace as ``name``."""
    from ._session import current_session

    current_session().runtime.inject(name, obj, description)


def retrieve(name: str) -> Any:
    """The live object the agent namespace holds under ``name``."""
    from ._session import current_session

    return current_session().runtime.retrieve(name)


def update(name: str, obj: Any, *, force: bool = False) -> None:
    """Replace an injected object; refuses a change of type unless ``force``."""
    from ._session import current_session

    current_session().runtime.update(name, obj, force=force)


def set_model(model: Model) -> None:
    """Use ``model`` (any object with the ``cave.models.Model`` protocol) for agent turns."""
    from ._session import current_session

    current_session().set_model(model)


def session() -> Session:
    """The current session: runtime, conversation, model and settings."""
    from ._session import current_session

    return current_session()


def __getattr__(name: str) -> Any:
    """``cave.tools``, ``cave.checkpoint`` and ``cave.Agent`` load on first use: kernel start-up
    imports none of them (``cave.checkpoint.register`` and ``.copy_database`` work after a plain
    ``import cave``)."""
    if name in ("tools", "checkpoint"):
        import importlib

        return importlib.import_module(f".{name}", __name__)  # binds cave.<name> as it loads
    if name == "Agent":
        from ._subagent import Agent

        globals()["Agent"] = Agent
        return Agent
    raise AttributeError(f"module 'cave' has no attribute {name!r}")


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext cave`` in a non-Cave IPython: the magics, with blocking agent turns."""
    from .kernel._magics import load_ipython_extension as load

    load(shell)


__all__ = [
    "ApprovalError",
    "AuditChainBroken",
    "AuthorityError",
    "CaveError",
    "CheckpointError",
    "CheckpointNotFound",
    "CheckpointTampered",
    "ConfigError",
    "MaxStepsReached",
    "MissingAPIKey",
    "ModelError",
    "ModelResponseError",
    "NameNotFound",
    "PolicyFileError",
    "RuntimeStateError",
    "StrictModeUnavailable",
    "ToolError",
    "TurnInterrupted",
    "TurnStopped",
    "TypeChangeRefused",
    "__version__",
    "inject",
    "load_ipython_extension",
    "retrieve",
    "session",
    "set_model",
    "tools",
    "update",
    "Agent",
    "SkillError",
    "BudgetReached",
    "EmptyModelReply",
]
