"""The context-economy benchmark's data and tasks, shared by every system (and importable in the
peers' own virtual environments: pandas and numpy only, no Cave).

Each task is a user request (one or two turns) and the code that answers it, written once; each
system runs that code in its own way (Cave's tool call, CaveAgent's fenced block, smolagents'
<code> block). The JSON function-calling agent has no code, so its trajectory is written in
``bench_context_economy.py`` in tool calls. ``expected(task)`` is computed here directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

ROWS = 100_000
REGIONS = ["north", "south", "east", "west"]
CUSTOMERS = ["Acme Corp", "Globex", "Initech", "Umbrella", "Stark Industries", "Wayne Enterprises",
             "Wonka Foods", "Tyrell", "Cyberdyne", "Soylent"]


def make_sales() -> pd.DataFrame:
    """100,000 orders with a messy customer column (case, spacing, punctuation variants)."""
    rng = np.random.default_rng(11)
    base = rng.choice(CUSTOMERS, ROWS)
    style = rng.integers(0, 6, ROWS)
    messy = [
        name if s == 0 else name.upper() if s == 1 else f"  {name.lower()} " if s == 2
        else name.replace(" ", "  ") if s == 3 else f"{name}." if s == 4 else f"{name},"
        for name, s in zip(base, style, strict=True)
    ]
    return pd.DataFrame({
        "order_id": [f"o{i:06d}" for i in range(ROWS)],
        "region": rng.choice(REGIONS, ROWS),
        "month": rng.integers(1, 13, ROWS),
        "amount": rng.gamma(2.0, 50.0, ROWS).round(2),
        "customer": messy,
    })


WEIGHTS = {"north": 1.0, "south": 1.2, "east": 0.9, "west": 1.1}


@dataclass(frozen=True)
class Task:
    name: str
    prompts: tuple[str, ...]
    """One user turn each."""
    steps: tuple[tuple[str, ...], ...]
    """Per turn: the code steps (each prints what the model needs), then a text answer."""
    result: str
    """The variable holding the final result."""
    answers: tuple[str, ...]


CLEAN = ("clean = (sales.customer.str.strip().str.lower().str.replace(r'[^a-z ]', '', regex=True)"
         ".str.replace(r'\\s+', ' ', regex=True))\n")

TASKS: tuple[Task, ...] = (
    Task("filter-aggregate", ("Total sales by region in the second half of the year?",),
         (("h2 = sales[sales.month >= 7].groupby('region').amount.sum().round(2)\nprint(h2)",),),
         "h2", ("Second-half totals by region are in `h2`.",)),
    Task("follow-up", ("Total sales by region in the second half of the year?",
                       "And each region's share of that total?"),
         (("h2 = sales[sales.month >= 7].groupby('region').amount.sum().round(2)\nprint(h2)",),
          ("share = (h2 / h2.sum()).round(4)\nprint(share)",)),
         "share", ("Totals are in `h2`.", "Shares are in `share`.")),
    Task("top-k-custom", ("Top 5 orders by our weighted score (amount x region weight x "
                          "(1 + month/12))?",),
         ((f"weights = {WEIGHTS!r}\n"
           "def score(df):\n    return df.amount * df.region.map(weights) * (1 + df.month / 12)\n"
           "top5 = sales.assign(score=score(sales).round(4)).nlargest(5, 'score')"
           "[['order_id', 'score']].reset_index(drop=True)\nprint(top5)",),),
         "top5", ("The top 5 orders are in `top5`.",)),
    Task("clean-text", ("The customer names are messy: clean them and count orders per "
                        "customer.",),
         ((CLEAN + "print(clean.nunique(), sales.customer.nunique())",
           "counts = clean.value_counts().sort_index()\nprint(counts)"),),
         "counts", ("Orders per cleaned customer name are in `counts`.",)),
    Task("report-table", ("A summary table for the report: orders, mean, median and 90th "
                          "percentile of amount per region.",),
         (("report = sales.groupby('region').amount.agg(orders='count', mean='mean', "
           "median='median', p90=lambda s: s.quantile(0.9)).round(2)\nprint(report)",),),
         "report", ("The table is in `report`.",)),
)


def expected(task: Task, sales: pd.DataFrame) -> Any:
    """The right final result, computed directly."""
    ns: dict[str, Any] = {"sales": sales}
    for turn in task.steps:
        for code in turn:
            exec(code.replace("print(", "(lambda *a, **k: None)("), ns)
    return ns[task.result]


def canonical(value: Any) -> str:
    """A result as canonical JSON text (how results are compared, also across processes)."""
    import json

    if isinstance(value, str):  # already canonical (from a peer's process)
        return value
    return json.dumps(to_jsonable(value), sort_keys=True, default=str)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, pd.Series):
        return {"series": {str(k): float(v) for k, v in value.items()}}
    if isinstance(value, pd.DataFrame):
        frame = value.reset_index()
        return {"frame": {str(c): [float(x) if isinstance(x, (int, float, np.number)) else str(x)
                                   for x in frame[c]] for c in frame.columns}}
    return value
