"""Run one context-economy task on a peer system, in that peer's own virtual environment.

Usage: ``python _economy_peer.py caveagent|smolagents BASE_URL TASK`` prints one JSON line:
the final result (canonical JSON) and the wall time of the agent's turns (set-up excluded). The
model is the benchmark's loopback OpenAI-compatible server (zero latency, scripted by the
benchmark), reached through each peer's own OpenAI model class, as each peer's README shows:

* CaveAgent 0.8: ``CaveAgent(OpenAIModel(...), runtime=IPythonRuntime(variables=[Variable(...)]))``
  and ``await agent.run(prompt)``; the result read back with ``await runtime.retrieve(name)``
  (its docs declare output variables up front, so the result variable is declared too).
* smolagents: ``CodeAgent(tools=[], model=OpenAIServerModel(...))`` and
  ``agent.run(prompt, additional_args={"sales": df})``, later turns with ``reset=False``; the
  result is what the agent's ``final_answer`` returned.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from _economy_tasks import TASKS, canonical, make_sales


def run_caveagent(base_url: str, task: Any, sales: Any) -> Any:
    from cave_agent import CaveAgent
    from cave_agent.models import OpenAIModel
    from cave_agent.runtime import IPythonRuntime, Variable

    async def main() -> Any:
        model = OpenAIModel(model_id="scripted", base_url=base_url, api_key="sk-bench")
        runtime = IPythonRuntime(variables=[
            Variable("sales", sales, "sales orders, one row per order"),
            Variable(task.result, None, "store the result here"),
        ])
        agent = CaveAgent(model, runtime=runtime)
        t0 = time.perf_counter()
        for prompt in task.prompts:
            await agent.run(prompt)
        wall = time.perf_counter() - t0
        value = await runtime.retrieve(task.result)
        await model.aclose()
        return value, wall

    return asyncio.run(main())


def run_smolagents(base_url: str, task: Any, sales: Any) -> Any:
    from smolagents import CodeAgent, OpenAIServerModel

    model = OpenAIServerModel(model_id="scripted", api_base=base_url, api_key="sk-bench")
    agent = CodeAgent(tools=[], model=model, additional_authorized_imports=["pandas", "numpy"],
                      verbosity_level=0)
    value = None
    t0 = time.perf_counter()
    for i, prompt in enumerate(task.prompts):
        value = agent.run(prompt, reset=i == 0, additional_args={"sales": sales})
    return value, time.perf_counter() - t0


def main() -> int:
    system, base_url, name = sys.argv[1:4]
    task = next(t for t in TASKS if t.name == name)
    sales = make_sales()
    value, wall = (run_caveagent if system == "caveagent" else run_smolagents)(base_url, task,
                                                                                sales)
    print(json.dumps({"result": canonical(value), "wall_s": wall}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
