"""IPython magics: ``%%agent``/``%agent`` (blocking fallback) and ``%cave`` (settings, status).

In the Cave kernel agent cells never reach these magics: an input transformer routes them to the
async path first. They exist so terminal IPython (``%load_ext cave``) and nested uses still work.
"""

from __future__ import annotations

import shlex
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from .._errors import CaveError, ConfigError
from .._session import current_session

CAVE_USAGE = """\
%cave                       status: model, endpoint, workspace, injected objects, usage
%cave model [NAME] [--base-url URL]   show or change the model / endpoint
%cave key [openai]          enter an API key without echoing it (Anthropic by default)
%cave reset                 forget the conversation (the agent's variables stay)
%cave policy [...]          show or change the security policy (when the security layer is on)
%cave skills [add PATH]     list skills (Agent Skills format), or add a skill directory
%cave agents                list the sub-agents (cave.Agent) with their usage
%cave budget [NAME=VALUE]   limits on steps, tokens and cost per turn and session (help: -h)
%cave context               the next request's size, the model's window, what was compacted
%cave mode [strict|guard]   where agent code runs: a confined worker process, or the kernel
"""

_extra_commands: dict[str, Any] = {}


def register_cave_command(name: str, handler: Any) -> None:
    """Let another part (security, checkpoints) add a ``%cave NAME ...`` subcommand."""
    _extra_commands[name] = handler


@magics_class
class CaveMagics(Magics):
    @cell_magic
    def agent(self, line: str, cell: str) -> None:
        """Ask the agent: ``%%agent [-o NAME] [--max-steps N]`` then the request."""
        from ._cells import run_agent_sync

        run_agent_sync(line, cell)

    @line_magic("agent")  # type: ignore[arg-type]
    def agent_line(self, line: str) -> None:
        """Ask the agent in one line: ``%agent [options] request``."""
        from ._cells import run_agent_sync

        run_agent_sync(line, "")

    @line_magic
    def cave(self, line: str) -> None:
        """Settings and status of the Cave session; ``%cave help`` lists the commands."""
        args = shlex.split(line)
        command, rest = (args[0], args[1:]) if args else ("status", [])
        if command in ("help", "-h", "--help"):
            print(CAVE_USAGE)
        elif command == "status":
            print(status_text())
        elif command == "model":
            _model_command(rest)
        elif command == "key":
            _key_command(*rest[:1])
        elif command == "policy":
            from ._policy_command import policy_command

            policy_command(rest)
        elif command == "reset":
            current_session().reset_conversation()
            print("Conversation cleared; the agent's variables are kept.")
        elif command == "mode":
            from ._mode_command import mode_command

            mode_command(rest)
        elif command in _extra_commands:
            _extra_commands[command](rest)
        else:
            raise ConfigError(f"Unknown %cave command {command!r}.\n{CAVE_USAGE}")


def status_text() -> str:
    session = current_session()
    settings = session.model_settings
    model = session._model.name if session._model is not None else (settings.name or "default")
    injected = ", ".join(session.runtime.injected) or "(none)"
    turns = sum(1 for m in session.history if m["role"] == "user")
    return (
        f"model:     {model}\n"
        f"endpoint:  {settings.base_url or 'Anthropic API (ANTHROPIC_BASE_URL to change)'}\n"
        f"workspace: {session.workspace}\n"
        f"injected:  {injected}\n"
        f"messages:  {len(session.history)} ({turns} from the user side)"
    )


def _model_command(args: list[str]) -> None:
    session = current_session()
    settings = session.model_settings
    changed = False
    i = 0
    while i < len(args):
        if args[i] in ("--base-url", "--endpoint") and i + 1 < len(args):
            settings, changed, i = settings.with_base_url(args[i + 1]), True, i + 2
        elif args[i].startswith("--base-url="):
            settings, changed, i = settings.with_base_url(args[i].split("=", 1)[1]), True, i + 1
        elif not args[i].startswith("-"):
            settings, changed, i = settings.with_name(args[i]), True, i + 1
        else:
            raise ConfigError(f"Unknown option {args[i]!r}.\n{CAVE_USAGE}")
    if changed:
        session.set_model(settings=settings)
    print(status_text().split("\nworkspace")[0])


def _key_command(provider: str = "anthropic") -> None:
    import getpass

    from ..models._credentials import set_key

    if provider not in ("anthropic", "openai"):
        raise ConfigError(f"%cave key takes anthropic or openai, not {provider!r}.")
    key = getpass.getpass(f"{provider} API key (not echoed, not stored on disk): ").strip()
    if not key:
        raise ConfigError("No key entered; nothing changed.")
    settings = current_session().model_settings
    uses_openai = (settings.name or "").startswith("openai")  # the key goes to this endpoint
    same = (provider == "openai") == uses_openai
    set_key(provider, key, base_url=settings.base_url if same else None)
    del key
    current_session().set_model(settings=settings)
    print(
        "Key set for this kernel. It is kept out of os.environ, so agent code cannot read it there."
    )


def short_error_handler(
    shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None
) -> list[str]:
    """Show Cave's own errors as their message, not a traceback into Cave's internals."""
    stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}"]
    shell._showtraceback(etype, value, stb)
    return stb


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext cave`` in any IPython: magics and short errors (the turn runs blocking)."""
    shell.register_magics(CaveMagics)
    from ._checkpoint_magics import register as register_checkpoint

    register_checkpoint(shell)
    from ._budget_magics import budget_command, context_command

    register_cave_command("budget", budget_command)
    register_cave_command("context", context_command)

    shell.set_custom_exc((CaveError,), short_error_handler)
    from ._skills_command import agents_command, skills_command

    register_cave_command("skills", skills_command)
    register_cave_command("agents", agents_command)


__all__ = ["CaveMagics", "load_ipython_extension", "register_cave_command", "CaveError"]
