"""Agent framework overhead per step, with a zero-latency scripted model.

Overhead = turn wall time minus the time spent running the agent's code, divided by steps. It
covers the context builder (system prompt, manifest, history copy), the scripted model's reply
construction, event dispatch and audit calls. Target (issue 2): <= 2 ms per step. The manifest holds
10 injected objects, and the history grows through the turn, as in real use.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _table import write_table  # noqa: E402

from cave.agent._events import CodeFinished  # noqa: E402
from cave.agent._loop import Agent, AgentSettings  # noqa: E402
from cave.runtime._namespace import AgentRuntime  # noqa: E402
from cave.testing._script import reply  # noqa: E402
from cave.testing._scripted_model import ScriptedModel  # noqa: E402

STEPS = 30
TURNS = 20


def one_turn(steps: int) -> tuple[float, float]:
    runtime = AgentRuntime()
    for i in range(10):
        runtime.inject(f"obj{i}", list(range(100)), description=f"object {i}")
    script = [reply(f"step {i}", f"value_{i} = {i}") for i in range(steps - 1)] + [reply("done")]
    model = ScriptedModel(script)
    code_time = 0.0

    def on_event(event: Any) -> None:
        nonlocal code_time
        if isinstance(event, CodeFinished):
            code_time += event.result.duration_s

    agent = Agent(runtime, model, settings=AgentSettings(max_steps=steps + 1), echo=False)
    t0 = time.perf_counter()
    agent.run("go", on_event)
    total = time.perf_counter() - t0
    return total, code_time


def main() -> None:
    one_turn(5)  # warm up imports
    per_step = []
    code_share = []
    for _ in range(TURNS):
        total, code = one_turn(STEPS)
        per_step.append((total - code) / STEPS)
        code_share.append(code / STEPS)
    med = statistics.median
    write_table(
        "agent",
        ["measure", "median", "max", "target"],
        [
            (
                "framework overhead per step (ms)",
                med(per_step) * 1e3,
                max(per_step) * 1e3,
                "<= 2 ms",
            ),
            (
                "code execution per step, `x = i` (ms)",
                med(code_share) * 1e3,
                max(code_share) * 1e3,
                "–",
            ),
        ],
        notes=f"{TURNS} turns of {STEPS} steps, ScriptedModel (zero latency), 10 injected objects.",
    )


if __name__ == "__main__":
    main()
