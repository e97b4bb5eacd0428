"""Budgets: how many steps, tokens and dollars a turn and a session may spend.

Limits are checked at step boundaries only, before each model call, never in the middle of a
call or of a code step: a turn that reaches one ends with ``BudgetReached``, its history closed
like any stopped turn, so nothing is lost and the next turn can continue. A call already under way
is always allowed to finish, so a limit can be passed by at most one call's worth.

Tokens are all prompt tokens (uncached, cache read, cache write) plus output tokens. Cost is the
estimate from ``cave.models._pricing``; a model with no known price spends no cost budget (the
footer says "cost unknown"), which is stated rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from .._errors import BudgetReached, ConfigError
from ..models._protocol import Usage


@dataclass(frozen=True)
class Budget:
    """Limits per turn and per session; None means no limit."""

    turn_steps: int | None = None
    """Model calls in one turn (``max_steps`` still applies as well)."""
    turn_tokens: int | None = None
    """Prompt plus output tokens in one turn."""
    turn_cost: float | None = None
    """Estimated USD in one turn."""
    session_steps: int | None = None
    """Model calls since the session started (or its totals were reset)."""
    session_tokens: int | None = None
    session_cost: float | None = None

    NONE: ClassVar[Budget]
    """The preset with no limits."""

    def with_limits(self, **changes: Any) -> Budget:
        """A copy with these limits changed (``None`` removes a limit)."""
        return replace(self, **changes)

    def limits(self) -> dict[str, float | int]:
        """The limits that are set, by their ``%cave budget`` names."""
        return {_key(f.name): v for f in fields(self) if (v := getattr(self, f.name)) is not None}


Budget.NONE = Budget()


def tokens_of(usage: Usage) -> int:
    return (usage.input_tokens + usage.output_tokens + usage.cache_read_tokens
            + usage.cache_write_tokens)


@dataclass
class Totals:
    """What a session has spent so far; saved with checkpoints."""

    steps: int = 0
    turns: int = 0
    usage: Usage = field(default_factory=Usage)

    def to_dict(self) -> dict[str, Any]:
        u = self.usage
        return {"steps": self.steps, "turns": self.turns, "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens, "cache_read_tokens": u.cache_read_tokens,
                "cache_write_tokens": u.cache_write_tokens, "cost_usd": u.cost_usd}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Totals:
        usage = Usage(int(data["input_tokens"]), int(data["output_tokens"]),
                      int(data["cache_read_tokens"]), int(data["cache_write_tokens"]),
                      None if data.get("cost_usd") is None else float(data["cost_usd"]))
        return cls(int(data["steps"]), int(data["turns"]), usage)


def check(budget: Budget, *, turn_steps: int, turn: Usage, session: Totals) -> None:
    """Raise ``BudgetReached`` if another model call would go past a limit already reached."""
    spent: Iterable[tuple[str, float | int | None, float | int]] = (
        ("turn-steps", budget.turn_steps, turn_steps),
        ("turn-tokens", budget.turn_tokens, tokens_of(turn)),
        ("turn-cost", budget.turn_cost, turn.cost_usd or 0.0),
        ("session-steps", budget.session_steps, session.steps),
        ("session-tokens", budget.session_tokens, tokens_of(session.usage)),
        ("session-cost", budget.session_cost, session.usage.cost_usd or 0.0),
    )
    for name, limit, value in spent:
        if limit is not None and value >= limit:
            raise BudgetReached(name, _show(name, value), _show(name, limit))


def parse_assignments(args: Iterable[str], budget: Budget) -> Budget:
    """``turn-cost=0.50 session-tokens=2e6 turn-steps=none`` applied to ``budget``."""
    names = {_key(f.name): f.name for f in fields(Budget)}
    changes: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep or key not in names:
            raise ConfigError(
                f"{arg!r} is not a budget setting. Write NAME=VALUE with NAME one of "
                f"{', '.join(names)} (VALUE a number, or 'none' to remove the limit), for example "
                "`%cave budget turn-cost=0.50 session-cost=5`."
            )
        changes[names[key]] = parse_value(key, raw)
    return budget.with_limits(**changes)


def parse_value(key: str, raw: str) -> float | int | None:
    if raw.strip().lower() in ("none", "off", ""):
        return None
    try:
        value = float(raw.strip().lstrip("$"))
    except ValueError:
        raise ConfigError(f"{key} needs a number (or 'none'), not {raw!r}.") from None
    if value <= 0:
        raise ConfigError(f"{key} must be above 0 (or 'none' for no limit), not {raw!r}.")
    return value if key.endswith("cost") else int(value)


def describe(budget: Budget, totals: Totals) -> str:
    """The ``%cave budget`` table: each limit with what the session has spent."""
    rows = [f"session: {totals.turns} turns, {totals.steps} steps, "
            f"{tokens_of(totals.usage):,} tokens, {_cost(totals.usage.cost_usd)}"]
    limits = budget.limits()
    for key in (_key(f.name) for f in fields(Budget)):
        rows.append(f"  {key:<15} {_show(key, limits[key]) if key in limits else 'no limit'}")
    rows.append("Change with `%cave budget turn-cost=0.50 session-cost=5 turn-tokens=200000` "
                "('none' removes a limit).")
    return "\n".join(rows)


def footer(budget: Budget, totals: Totals) -> str:
    """The footer's session part: totals, against the session limits that are set."""
    parts = []
    for key, value, limit in (
        ("steps", totals.steps, budget.session_steps),
        ("tokens", tokens_of(totals.usage), budget.session_tokens),
        ("cost", totals.usage.cost_usd, budget.session_cost),
    ):
        if key == "cost":
            text = _cost(value)
        else:
            text = f"{value:,} {key}"
        if limit is not None:
            text += f" of {_show('session-' + key, limit)}"
        parts.append(text)
    return "session " + " / ".join(parts)


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def _cost(value: float | None) -> str:
    return "cost unknown" if value is None else f"${value:.4f}"


def _show(name: str, value: float | int | None) -> str:
    if name.endswith("cost"):
        return f"${float(value or 0):.4f}"
    return f"{int(value or 0):,}"
