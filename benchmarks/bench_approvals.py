"""Approval latency through a real Cave kernel, measured from a jupyter_client frontend.

Target (issue 4), median of 50 each:
* ask -> widget: from the agent's code calling ``fs.write`` (policy ``ask``) to the widget's first
  ``comm_open`` arriving on IOPub: <= 50 ms;
* click -> resume: from the frontend sending the button's ``comm_msg`` to ``fs.write`` returning
  in the agent's code: <= 50 ms.

Baseline, same kernel, same run: a stock ipywidgets ``Button`` made and displayed by agent code
(-> its ``comm_open``), and a click on it that sets an event the agent's code waits for (-> the
wait returns). That is what ipykernel and ipywidgets cost by themselves; the ratio is what the
approval path (primitive, policy, SQLite queue, helper thread, a 15-widget view) adds.

Timestamps come from ``time.monotonic()`` in both processes (CLOCK_MONOTONIC, one clock per
machine on Linux), so kernel-side and client-side times are comparable.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _table import write_table  # noqa: E402

from cave.testing import AnthropicServer, KernelHarness, reply  # noqa: E402

N = int(__import__("os").environ.get("CAVE_BENCH_N", "50"))
CLICK = {"method": "custom", "content": {"event": "click"}}

APPROVAL_CODE = """
import json, time
asked, resumed = [], []
for i in range({n}):
    asked.append(time.monotonic())
    fs.write({outside!r} + f'/f{{i}}.txt', 'x')
    resumed.append(time.monotonic())
print('TIMES', json.dumps({{'asked': asked, 'resumed': resumed}}))
"""

BASELINE_CODE = """
import json, threading, time
import ipywidgets
from IPython.display import display
asked, resumed = [], []
for i in range({n}):
    done = threading.Event()
    asked.append(time.monotonic())
    button = ipywidgets.Button(description=f'baseline {{i}}')
    button.on_click(lambda _b, done=done: done.set())
    display(button)
    done.wait(30)
    resumed.append(time.monotonic())
print('TIMES', json.dumps({{'asked': asked, 'resumed': resumed}}))
"""


class Frontend:
    """Clicks each widget as it appears; records when its first comm_open came and the click."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.opened: list[float] = []
        self.clicked: list[float] = []
        self.states: dict[str, dict[str, Any]] = {}
        self._waiting_open = True

    def __call__(self, msg: dict[str, Any], kernel: KernelHarness) -> None:
        now = time.monotonic()
        kind = msg["msg_type"]
        if kind == "comm_open":
            if self._waiting_open:
                self.opened.append(now)
                self._waiting_open = False
            self.states[msg["content"]["comm_id"]] = msg["content"]["data"].get("state", {})
        elif kind == "display_data" and not self._waiting_open:
            view = msg["content"]["data"].get("application/vnd.jupyter.widget-view+json")
            if view is None:
                return
            comm_id = self._find(view["model_id"])
            self._waiting_open = True
            self.clicked.append(time.monotonic())
            kernel.comm_msg(comm_id, CLICK)

    def _find(self, model_id: str) -> str:
        todo = [model_id]
        while todo:
            comm_id = todo.pop()
            state = self.states.get(comm_id, {})
            description = state.get("description", "")
            if description == self.label or description.startswith("baseline"):
                return comm_id
            todo += [c.removeprefix("IPY_MODEL_") for c in state.get("children", [])]
        raise RuntimeError(f"no button {self.label!r} in widget {model_id}")


def run_turn(kernel: KernelHarness, server_replies: list[Any], code: str, label: str) -> Any:
    server_replies[:] = [reply("", code), reply("done")]
    frontend = Frontend(label)
    cell = kernel.execute("%%agent\nmeasure", on_message=frontend, timeout=600)
    if cell.status != "ok":
        raise RuntimeError(cell.all_text)
    found = re.search(r"TIMES (\{.*\})", cell.stdout)
    if found is None:
        raise RuntimeError(cell.all_text[-2000:])
    times = json.loads(found.group(1))
    asked, resumed = times["asked"], times["resumed"]
    if not (len(asked) == len(frontend.opened) == len(frontend.clicked) == N):
        raise RuntimeError(f"{len(asked)} asks, {len(frontend.opened)} widgets")
    to_widget = [(o - a) * 1000 for a, o in zip(asked, frontend.opened, strict=True)]
    to_resume = [(r - c) * 1000 for c, r in zip(frontend.clicked, resumed, strict=True)]
    return to_widget, to_resume


def main() -> None:
    replies: list[Any] = []
    server = AnthropicServer(lambda body: replies.pop(0)).start()
    root = Path(tempfile.mkdtemp(prefix="cave-bench-approvals-"))
    (root / "outside").mkdir()
    (root / "workspace").mkdir()
    kernel = KernelHarness(
        env={
            "ANTHROPIC_BASE_URL": server.base_url,
            "ANTHROPIC_API_KEY": "sk-ant-bench",
            "CAVE_SESSION_DIR": str(root / "session"),
        },
        cwd=root / "workspace",
    ).start()
    try:
        # Warm up both paths once (imports, first widget), then measure.
        run_turn(kernel, replies, BASELINE_CODE.format(n=N), "baseline")
        base_widget, base_resume = run_turn(kernel, replies, BASELINE_CODE.format(n=N), "baseline")
        outside = str(root / "outside")
        (root / "outside" / "warm").mkdir()
        run_turn(
            kernel, replies, APPROVAL_CODE.format(n=N, outside=outside + "/warm"), "Approve once"
        )
        ask_widget, ask_resume = run_turn(
            kernel, replies, APPROVAL_CODE.format(n=N, outside=outside), "Approve once"
        )
    finally:
        kernel.stop()
        server.stop()

    def row(name: str, ours: list[float], base: list[float]) -> list[Any]:
        med, bmed = statistics.median(ours), statistics.median(base)
        p90 = statistics.quantiles(ours, n=10)[-1]
        verdict = "met" if med <= 50 else "MISSED"
        return [name, round(med, 2), round(p90, 2), round(bmed, 2), round(med / bmed, 2), verdict]

    write_table(
        "approvals",
        ["path", "median ms", "p90 ms", "baseline median ms", "ratio", "target <= 50 ms"],
        [
            row("fs.write asks -> widget comm_open on IOPub", ask_widget, base_widget),
            row("click comm_msg sent -> fs.write returns", ask_resume, base_resume),
        ],
        notes=(
            f"Median of {N} requests in one agent step, Cave kernel driven by jupyter_client. "
            "Baseline: a stock ipywidgets Button made by agent code (-> its comm_open) and a "
            "click on it that wakes the agent's code, same kernel, same run. 2 shared cores."
        ),
    )


if __name__ == "__main__":
    main()
