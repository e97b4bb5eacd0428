"""A scripted Cave kernel in strict mode, and the widget clicker the strict tests share."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cave.security._confinement import strict_support
from cave.testing import KernelHarness, ScriptedKernel

HARMLESS_ENV = ("HOME", "PATH", "LANG", "LC_ALL", "TZ", "TERM", "USER", "SHELL")
CLICK = {"method": "custom", "content": {"event": "click"}}

needs_strict = pytest.mark.skipif(
    not strict_support().available,
    reason="strict mode cannot be enforced here: " + "; ".join(strict_support().reasons),
)


class StrictKernel(ScriptedKernel):
    """A scripted kernel switched to strict mode, with a directory outside its workspace."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.outside = root / "outside"
        workspace = root / "workspace"
        for d in (self.outside, workspace):
            d.mkdir(parents=True, exist_ok=True)
        # Libraries read these while importing (pandas reads HOME); the environment rule's own
        # defaults (issue-10-secrets) allow them too.
        (workspace / "cave.toml").write_text(
            "[policy]\n" + "".join(f'"env:{n}" = "allow"\n' for n in HARMLESS_ENV))
        super().__init__(workspace=workspace,
                         env={"CAVE_SESSION_DIR": str(workspace / ".cave"), **(env or {})})

    def start(self) -> StrictKernel:
        super().start()
        cell = self.execute("%cave mode strict", timeout=90)
        assert cell.status == "ok", cell.all_text
        assert "mode: strict" in cell.stdout, cell.all_text
        return self

    def tool_results(self) -> str:
        """What the model was sent back after running code, in the last request."""
        return json.dumps(self.requests[-1].body["messages"][-1])

    def value(self, expr: str) -> str:
        """``print(expr)`` in a user cell; its stdout, stripped."""
        cell = self.execute(f"import cave\nprint({expr})")
        assert cell.status == "ok", cell.all_text
        return str(cell.stdout.strip())


class Widgets:
    """Tracks widget comms from IOPub: the buttons of each displayed approval, by label."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.shown: list[tuple[str, str]] = []

    def see(self, msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "comm_open":
            self.states[msg["content"]["comm_id"]] = msg["content"]["data"].get("state", {})
        elif msg["msg_type"] == "display_data":
            data = msg["content"]["data"]
            view = data.get("application/vnd.jupyter.widget-view+json")
            found = re.match(r"\[cave\] approval (\w+):", data.get("text/plain", ""))
            if view and found:
                self.shown.append((found.group(1), view["model_id"]))

    def button(self, model_id: str, label: str) -> str:
        todo = [model_id]
        while todo:
            comm_id = todo.pop()
            state = self.states.get(comm_id, {})
            if state.get("description") == label:
                return comm_id
            todo += [c.removeprefix("IPY_MODEL_") for c in state.get("children", [])]
        raise AssertionError(f"no {label!r} button under {model_id}")


def clicker(widgets: Widgets, *labels: str) -> Callable[[dict[str, Any], KernelHarness], None]:
    """An on_message hook that clicks ``labels[i]`` on the i-th approval widget displayed."""
    clicked: set[str] = set()

    def on_message(msg: dict[str, Any], kernel: KernelHarness) -> None:
        widgets.see(msg)
        for i, (rid, model_id) in enumerate(widgets.shown):
            if rid not in clicked and i < len(labels):
                clicked.add(rid)
                kernel.comm_msg(widgets.button(model_id, labels[i]), CLICK)

    return on_message
