"""Budget limits: parsing at the edge, checks at step boundaries, totals that round-trip."""

from __future__ import annotations

import pytest

from cave._errors import BudgetReached, ConfigError
from cave.agent._budget import Budget, Totals, check, describe, footer, parse_assignments
from cave.models._protocol import Usage


def test_assignments_parse_and_none_removes_a_limit() -> None:
    budget = parse_assignments(["turn-cost=$0.50", "session-tokens=2e6", "turn-steps=4"],
                               Budget())
    assert budget == Budget(turn_steps=4, turn_cost=0.5, session_tokens=2_000_000)
    assert parse_assignments(["turn-cost=none"], budget).turn_cost is None


@pytest.mark.parametrize("bad,says", [("turn-cost", "NAME=VALUE"), ("cost=1", "turn-cost"),
                                      ("turn-cost=cheap", "needs a number"),
                                      ("turn-steps=0", "above 0")])
def test_bad_input_names_the_fix(bad: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_assignments([bad], Budget())


def test_limits_are_checked_against_turn_and_session_spending() -> None:
    totals = Totals(steps=3, turns=2, usage=Usage(100, 50, 10, 0, 0.02))
    check(Budget(session_cost=0.05), turn_steps=1, turn=Usage(), session=totals)
    with pytest.raises(BudgetReached) as err:
        check(Budget(session_tokens=160), turn_steps=1, turn=Usage(), session=totals)
    assert err.value.limit == "session-tokens" and "spent 160 of 160" in str(err.value)
    with pytest.raises(BudgetReached, match="--max-cost"):
        check(Budget(turn_cost=0.01), turn_steps=1, turn=Usage(cost_usd=0.01), session=totals)


def test_totals_round_trip_and_unknown_cost_is_said() -> None:
    totals = Totals(steps=2, turns=1, usage=Usage(1, 2, 3, 4, None))
    assert Totals.from_dict(totals.to_dict()) == totals
    assert "cost unknown" in footer(Budget(), totals)
    assert "of $5.0000" in footer(Budget(session_cost=5), totals)
    assert "session-cost    $5.0000" in describe(Budget(session_cost=5), totals)
