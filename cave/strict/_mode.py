"""Switching a session between guard mode (agent code in the kernel) and strict mode (a worker).

Asking for strict mode where it cannot be enforced is an error that names the reason; the session
stays in the mode it was in. There is no silent fallback: a session configured for strict mode
(``mode = "strict"`` in cave.toml, ``c.CaveKernel.mode``) refuses to run agent turns until strict
mode works or the user switches to guard mode explicitly.
"""

from __future__ import annotations

import os
from typing import Any

from .._errors import ConfigError, StrictModeUnavailable

__all__ = ["MODES", "allowed_environment", "enter_strict", "leave_strict", "mode_text"]

MODES = ("guard", "strict")


def allowed_environment(security: Any) -> dict[str, str]:
    """The kernel's environment variables the policy allows without asking (for the worker)."""
    from ..security._capabilities import Capability
    from ..security._policy import Effect

    policy = security.policy
    return {
        name: value
        for name, value in os.environ.items()
        if policy.decide(Capability("env", name)).effect is Effect.ALLOW
    }


def enter_strict(session: Any) -> Any:
    """Run this session's agent code in a confined worker from now on (starts it to prove it)."""
    from ..security._confinement import strict_support
    from ._executor import StrictExecutor
    from ._process import _StartFailed

    support = strict_support()
    if not support.available:
        raise StrictModeUnavailable(support.reasons)
    current = getattr(session.runtime, "executor", None)
    if isinstance(current, StrictExecutor):
        return current
    security = session.ensure_security()
    if security is None:
        raise ConfigError("Strict mode needs the security layer (the broker decides through it); "
                          "this session was built with secure=False.")
    executor = StrictExecutor(
        session.runtime,
        security=lambda: session.security,
        workspace=session.workspace,
        child_env=lambda: allowed_environment(session.security),
        settings=session.strict_settings,
    )
    try:
        executor._ensure_worker()
    except _StartFailed as exc:
        executor.close()
        raise StrictModeUnavailable((f"the worker could not confine itself: {exc}",)) from None
    session.runtime.use_executor(executor)
    return executor


def leave_strict(session: Any) -> None:
    """Back to guard mode: end the worker; the kernel's namespace already holds everything."""
    from ._executor import StrictExecutor

    executor = getattr(session.runtime, "executor", None)
    if isinstance(executor, StrictExecutor):
        session.runtime.use_executor(None)  # what the worker defined loads at the next step
        executor.close()


def mode_text(session: Any) -> str:
    from ..security._confinement import strict_support
    from ._executor import StrictExecutor

    executor = getattr(session.runtime, "executor", None)
    active = "strict" if isinstance(executor, StrictExecutor) else "guard"
    lines = [f"mode: {session.mode} (agent code runs "
             + ("in a confined worker process" if active == "strict" else "in the kernel process")
             + ")"]
    if session.mode == "strict" and active != "strict":
        lines.append("  strict mode is configured but not running: the next agent turn starts "
                     "it, or fails with the reason")
    if isinstance(executor, StrictExecutor) and executor.worker is not None:
        lines.append(f"  worker pid {executor.worker.pid}, started {executor.spawned} time(s), "
                     f"{executor.broker.served} broker request(s) served")
    lines.append(strict_support().describe())
    return "\n".join(lines)


def configured_mode(workspace: Any) -> str | None:
    """``mode = "strict"|"guard"`` at the top of cave.toml (project file, else user file)."""
    from pathlib import Path

    import tomllib

    from ..security._policy_file import PROJECT_FILE, user_policy_file

    for path in (Path(workspace) / PROJECT_FILE, user_policy_file()):
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError):
            continue  # the policy loader reports a broken file with its line
        mode = data.get("mode")
        if mode is None:
            continue
        if mode not in MODES:
            raise ConfigError(f"{path}: mode = {mode!r} is not a mode; write mode = \"strict\" or "
                              "mode = \"guard\" (or remove the line for guard mode).")
        return str(mode)
    return None
