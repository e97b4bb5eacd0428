"""``%cave skills`` (list) and ``%cave skills add PATH``; ``%cave agents`` lists sub-agents."""

from __future__ import annotations

from pathlib import Path

from .._errors import ConfigError
from .._session import current_session

SKILLS_USAGE = """\
%cave skills                 the skills: name, description, where from, whether active
%cave skills add PATH        add a skill directory (or a directory of skills)
%cave skills refresh         scan the skill directories again
"""


def skills_command(args: list[str]) -> None:
    from ..skills._attach import registry_for

    session = current_session()
    registry = registry_for(session)
    if not args or args[0] == "list":
        pass
    elif args[0] == "add" and len(args) == 2:
        names = registry.add(Path(args[1]))
        print(f"Added {', '.join(names) or 'no new skills'} from {args[1]}.")
    elif args[0] == "refresh":
        registry.refresh()
    else:
        raise ConfigError(f"Unknown %cave skills command {' '.join(args)!r}.\n{SKILLS_USAGE}")
    print(skills_text(registry))


def skills_text(registry: object) -> str:
    rows = registry.rows()  # type: ignore[attr-defined]
    lines = [] if rows else ["No skills installed. Put them in .cave/skills/ or "
                             "~/.config/cave/skills/, or use %cave skills add PATH."]
    for name, description, where, state in rows:
        short = description if len(description) <= 100 else description[:97] + "..."
        lines.append(f"{name}  [{state}]\n    {short}\n    {where}")
    for problem in registry.problems:  # type: ignore[attr-defined]
        lines.append(f"not loaded: {problem.path}: {problem.reason}")
    return "\n".join(lines)


def agents_command(args: list[str]) -> None:
    session = current_session()
    agents = session.subagents.all() if session.subagents is not None else []
    if not agents:
        print("No sub-agents. Create one with cave.Agent(name, policy=[...]).")
    for agent in agents:
        u = agent.usage
        cost = f" · ${u.cost_usd:.4f}" if u.cost_usd is not None else ""
        print(
            f"{agent.name}: {len(agent.history)} messages, "
            f"{len(agent.runtime.agent_variables())} variables, "
            f"{u.input_tokens:,} in / {u.output_tokens:,} out tokens{cost}; "
            f"given: {agent.given}"
        )
