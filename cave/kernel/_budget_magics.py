"""``%cave budget``, ``%cave context`` and the ``[budget]`` table of ``cave.toml``.

The edge where text becomes a ``Budget``: the magic's ``NAME=VALUE`` words, the kernel's
``c.CaveKernel.*`` traits and the TOML table all go through ``_budget.parse_value``::

    [budget]                 # in cave.toml (project) or ~/.config/cave/cave.toml (user)
    turn-cost = 0.50         # USD
    session-cost = 5
    turn-tokens = 200000
    context-window = 200000  # tokens; overrides the model's known window
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from .._errors import ConfigError
from .._session import Session, current_session
from ..agent import _budget

BUDGET_USAGE = """\
%cave budget                                  the limits and what the session has spent
%cave budget turn-cost=0.50 session-cost=5 turn-tokens=200000   set limits ('none' removes one)
   names: turn-steps turn-tokens turn-cost session-steps session-tokens session-cost
%cave budget reset-totals                     start the session's totals from zero
%cave context                                 the next request's size, the window, compaction
"""


def budget_command(args: list[str]) -> None:
    session = current_session()
    if args and args[0] in ("help", "-h", "--help"):
        print(BUDGET_USAGE)
        return
    if "reset-totals" in args:
        args = [a for a in args if a != "reset-totals"]
        session.totals = _budget.Totals()
    if args:
        session.budget = _budget.parse_assignments(args, session.budget)
    print(_budget.describe(session.budget, session.totals))


def context_command(args: list[str]) -> None:
    if args:
        raise ConfigError(f"%cave context takes no arguments.\n{BUDGET_USAGE}")
    print(context_text(current_session()))


def context_text(session: Session) -> str:
    """The next request's counted (or estimated) size against the window and the budget.

    Measures what would be sent if nothing new were compacted; it calls no summariser."""
    from ..agent import _context
    from ..agent._compaction import estimate_tokens
    from ..agent._loop import context_budget

    session.ensure_security()
    settings, model = session.agent_settings, session.model
    budget, window = context_budget(settings, model.name)
    messages = session.compactor._assemble(session.history)
    system = _context.system_blocks(session.primitives_doc,
                                    session.runtime.manifest(variables=False))
    fixed = estimate_tokens([{"s": system, "t": _context.TOOLS}])
    tokens = int((estimate_tokens(messages) + fixed) * session.compactor.scale)
    how = "local estimate, calibrated by the provider's last reported usage"
    count = getattr(model, "count_tokens", None)
    if callable(count) and messages:
        request = _context.build_request(system=system, history=messages,
                                         max_tokens=settings.max_tokens)
        try:
            tokens, how = count(request), "counted by the provider's token-counting endpoint"
        except Exception as exc:  # the endpoint is optional: keep the estimate
            how = f"local estimate (the counting endpoint failed: {exc})"
    return (f"next request: {tokens:,} tokens ({how})\n"
            f"window:       {window:,} tokens ({model.name}); compaction starts above "
            f"{budget:,}\n"
            f"history:      {len(session.history)} messages kept whole; {len(messages)} sent\n"
            f"{session.compactor.describe()}")


def budget_from_toml(workspace: Path, budget: _budget.Budget) -> tuple[_budget.Budget, int | None]:
    """``budget`` with the ``[budget]`` tables of the user's and the project's ``cave.toml``
    applied (the project's last), and the ``context-window`` they set (or None)."""
    from .._env import config_dir

    window: int | None = None
    for path in (config_dir() / "cave.toml", workspace / "cave.toml"):
        if not path.is_file():
            continue
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8")).get("budget") or {}
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}. Fix the file (its [budget] table).") from exc
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [budget] must be a table like turn-cost = 0.5.")
        table = dict(table)
        if "context-window" in table:
            value = _budget.parse_value("context-window", str(table.pop("context-window")))
            window = int(value) if value is not None else None
        try:
            budget = _budget.parse_assignments([f"{k}={v}" for k, v in table.items()], budget)
        except ConfigError as exc:
            raise ConfigError(f"{path} [budget]: {exc}") from None
    return budget, window


def budget_from_traits(kernel: Any) -> _budget.Budget:
    """The ``c.CaveKernel.turn_cost`` ... traits as a Budget."""
    names = ("turn_steps", "turn_tokens", "turn_cost", "session_steps", "session_tokens",
             "session_cost")
    values = {n: getattr(kernel, n, None) for n in names}
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ConfigError(f"c.CaveKernel.{name} must be above 0 (or None), not {value}.")
    return _budget.Budget(**values)
