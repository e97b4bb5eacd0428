"""Clicking approval widgets from a test, as JupyterLab would: real ``comm_msg`` clicks.

``ApprovalWidgets`` follows a cell's IOPub messages (pass its ``see`` to
``KernelHarness.execute(on_message=...)``, or use :func:`approval_clicker`) and finds each
approval's buttons by their labels, so a test presses **Approve once**, **Approve for this
session** or **Deny** the way a person does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ._kernel_harness import KernelHarness

__all__ = ["CLICK", "ApprovalWidgets", "approval_clicker", "request_ids"]

CLICK = {"method": "custom", "content": {"event": "click"}}
"""The ``comm_msg`` data a browser sends when a button is clicked."""

_SHOWN = re.compile(r"\[cave\] approval (\w+):")


def request_ids(messages: list[dict[str, Any]]) -> list[str]:
    """Request ids in the order their widgets were displayed."""
    ids = []
    for m in messages:
        if m["msg_type"] == "display_data":
            found = _SHOWN.match(m["content"]["data"].get("text/plain", ""))
            if found:
                ids.append(found.group(1))
    return ids


class ApprovalWidgets:
    """Tracks widget comms from IOPub: the buttons of each displayed approval, by label."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.shown: list[tuple[str, str]] = []
        """(request id, widget-view model id) in display order."""
        self.texts: list[str] = []
        """The plain-text form of each approval shown, in display order."""

    def see(self, msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "comm_open":
            self.states[msg["content"]["comm_id"]] = msg["content"]["data"].get("state", {})
        elif msg["msg_type"] == "display_data":
            data = msg["content"]["data"]
            view = data.get("application/vnd.jupyter.widget-view+json")
            text = data.get("text/plain", "")
            found = _SHOWN.match(text)
            if view and found:
                self.shown.append((found.group(1), view["model_id"]))
                self.texts.append(text)

    def button(self, model_id: str, label: str) -> str:
        """The comm id of the button labelled ``label`` inside the box ``model_id``."""
        todo = [model_id]
        while todo:
            comm_id = todo.pop()
            state = self.states.get(comm_id, {})
            if state.get("description") == label:
                return comm_id
            todo += [c.removeprefix("IPY_MODEL_") for c in state.get("children", [])]
        raise AssertionError(f"no {label!r} button under {model_id}")


def approval_clicker(
    widgets: ApprovalWidgets, *labels: str
) -> Callable[[dict[str, Any], KernelHarness], None]:
    """An on_message hook that clicks ``labels[i]`` on the i-th approval widget displayed."""
    clicked: set[str] = set()

    def on_message(msg: dict[str, Any], kernel: KernelHarness) -> None:
        widgets.see(msg)
        for i, (rid, model_id) in enumerate(widgets.shown):
            if rid not in clicked and i < len(labels):
                clicked.add(rid)
                kernel.comm_msg(widgets.button(model_id, labels[i]), CLICK)

    return on_message
