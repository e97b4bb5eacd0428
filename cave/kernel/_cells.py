"""`%%agent` and `%agent` cells: parsing, and the coroutine that runs a turn.

In the Cave kernel an input transformer rewrites an agent cell into one ``await`` of
:func:`agent_cell`, so IPython runs it as an async cell on the kernel's event loop. The turn itself
runs in a worker thread; the loop stays free to deliver widget clicks and interrupts. Outside the
kernel (terminal IPython with ``%load_ext cave``) the same options go through
:func:`run_agent_sync`.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from .._errors import ConfigError, TurnInterrupted
from .._session import Session, current_session
from ..approvals._unattended import clear_unanswered, raise_unanswered

USAGE = (
    "usage: %%agent [-o NAME] [--max-steps N] [--timeout SECONDS] [--model MODEL] "
    "[--max-cost USD]\n"
    "       <your request, on the following lines>\n"
    "   or: %agent [options] <your request on one line>"
)


STOP_GRACE_S = 10.0
"""How long the stop button waits for agent code to stop before leaving it in the background."""


@dataclass(frozen=True)
class AgentCellOptions:
    prompt: str
    output: str | None = None
    """Copy this agent variable into the user namespace after the turn (``-o``)."""
    max_steps: int | None = None
    timeout: float | None = None
    model: str | None = None
    max_cost: float | None = None
    """This turn's cost limit in USD (``--max-cost``), instead of the session's turn-cost."""


_OPTION = re.compile(
    r"\s*(-o|--output|--max-steps|--timeout|--model|--max-cost)(?:=|\s+)(\"[^\"]*\"|'[^']*'|\S+)"
)
_FIELDS = {
    "-o": "output",
    "--output": "output",
    "--max-steps": "max_steps",
    "--timeout": "timeout",
    "--model": "model",
    "--max-cost": "max_cost",
}


def parse_agent_args(line: str, body: str = "") -> AgentCellOptions:
    """Options come first on the magic line; the request is the rest of it plus the body."""
    opts: dict[str, Any] = {}
    rest = line
    while rest.lstrip().startswith("-"):
        match = _OPTION.match(rest)
        if match is None:
            flag = rest.split()[0]
            problem = "needs a value" if flag in _FIELDS else "is not an option of %agent"
            raise ConfigError(f"{flag!r} {problem}.\n{USAGE}")
        flag, value = match.group(1), match.group(2).strip("\"'")
        key = _FIELDS[flag]
        try:
            opts[key] = (
                int(value) if key == "max_steps"
                else float(value.lstrip("$")) if key in ("timeout", "max_cost") else value
            )
        except ValueError:
            raise ConfigError(f"Option {flag} needs a number, got {value!r}.\n{USAGE}") from None
        rest = rest[match.end() :]
    if opts.get("output") is not None and not str(opts["output"]).isidentifier():
        raise ConfigError(f"-o needs a variable name, got {opts['output']!r}.\n{USAGE}")
    if opts.get("max_steps") is not None and opts["max_steps"] < 1:
        raise ConfigError(f"--max-steps must be at least 1.\n{USAGE}")
    if opts.get("max_cost") is not None and opts["max_cost"] <= 0:
        raise ConfigError(f"--max-cost must be above 0 (USD).\n{USAGE}")
    prompt = "\n".join(p for p in (rest.strip(), body.strip()) if p)
    if not prompt:
        raise ConfigError(f"The agent cell has no request.\n{USAGE}")
    return AgentCellOptions(prompt=prompt, **opts)


def rewrite_agent_cell(lines: list[str]) -> list[str]:
    """IPython input transformer: an agent cell becomes one ``await`` of :func:`agent_cell`."""
    if not lines:
        return lines
    first = lines[0].lstrip()
    if first.startswith("%%agent") and (len(first) == 7 or first[7] in " \t\n"):
        line, body = first[7:].rstrip("\n"), "".join(lines[1:])
    elif (
        first.startswith("%agent") and first[6:7] in (" ", "\t") and not "".join(lines[1:]).strip()
    ):
        line, body = first[6:].rstrip("\n"), ""
    else:
        return lines
    return [
        f"await __import__('cave.kernel._cells', fromlist=['_']).agent_cell({line!r}, {body!r})\n"
    ]


async def agent_cell(line: str, body: str) -> None:
    """Run one agent turn for the current cell; returns when the turn is over."""
    session, options, turn = _prepare(line, body)
    ctx = contextvars.copy_context()
    future = asyncio.get_running_loop().run_in_executor(None, ctx.run, turn)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        # The stop button (SIGINT, or our control-channel handler) cancelled the cell's task.
        # The worker then ends with TurnInterrupted(step), re-raised here with its real step; a
        # turn that finished in the same instant keeps its result.
        session.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=STOP_GRACE_S)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            print(
                f"[cave] the agent's code did not stop within {STOP_GRACE_S:.0f} s; it keeps "
                "running in the background until it returns to Python code",
                file=sys.stderr,
            )
            raise TurnInterrupted(0) from None
    _publish_output(session, options)
    raise_unanswered()  # an unattended run (papermill, nbconvert) fails the cell, never hangs


def run_agent_sync(line: str, body: str) -> None:
    """The same turn, blocking, for frontends without the Cave kernel's async path."""
    session, options, turn = _prepare(line, body)
    try:
        turn()
    except KeyboardInterrupt:
        session.cancel()
        raise
    _publish_output(session, options)
    raise_unanswered()


def _prepare(line: str, body: str) -> tuple[Session, AgentCellOptions, Callable[[], Any]]:
    """Parse the cell, apply ``--model``, and bind the turn (rendered into this cell) to run."""
    clear_unanswered()
    from ._render import CellRenderer

    session = current_session()
    options = parse_agent_args(line, body)
    if options.model and options.model != session.model_settings.name:
        session.set_model(settings=session.model_settings.with_name(options.model))
    settings = session.agent_settings.with_limits(
        max_steps=options.max_steps, code_timeout=options.timeout
    )
    budget = None
    if options.max_cost is not None:
        budget = session.budget.with_limits(turn_cost=options.max_cost)
    return session, options, partial(session.ask, options.prompt, CellRenderer(), settings=settings,
                                     budget=budget)


def _publish_output(session: Session, options: AgentCellOptions) -> None:
    if not options.output:
        return
    from IPython import get_ipython

    shell = get_ipython()
    value = session.runtime.retrieve(options.output)
    if shell is not None:
        shell.user_ns[options.output] = value
