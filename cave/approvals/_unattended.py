"""Unattended runs (papermill, ``nbconvert --execute``, any client that cannot show a widget).

An approval that nobody can answer must not hang a pipeline forever. A run *looks unattended*
when the ``execute_request`` that runs the cell neither allows stdin nor comes from a notebook
frontend (JupyterLab and Notebook 7 tag each request with ``metadata.cellId``; nbclient, which
papermill and nbconvert use, does neither). Someone may still answer such a request from a
terminal (``cave approvals approve ID``) or over the control channel, so a request whose policy
rule has no timeout of its own waits ``CAVE_UNATTENDED_WAIT`` seconds (default 300) for that,
then expires and is denied. ``CAVE_UNATTENDED=1`` says no one will answer (expire at once);
``CAVE_UNATTENDED=0`` turns the guess off (wait as the policy says, forever without a timeout).

A request whose rule has a timeout (``ask CAP timeout=N on_timeout=allow|deny``) always follows
it. When a request expired this way, the agent's code got its ``PermissionError``, and when the
turn ends the cell fails with :class:`UnansweredInUnattendedRun`, naming each request and how to
decide it ahead of time, so the pipeline stops visibly.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .._env import UNATTENDED_ENV as ENV
from .._env import UNATTENDED_WAIT_ENV as WAIT_ENV
from .._errors import ApprovalError

__all__ = [
    "UnansweredInUnattendedRun",
    "clear_unanswered",
    "is_unattended",
    "unattended_wait",
    "note_unanswered",
    "raise_unanswered",
]


class UnansweredInUnattendedRun(ApprovalError):
    """Approval requests that expired because no one could answer them (papermill, nbconvert)."""

    def __init__(self, requests: list[tuple[str, str]]) -> None:
        self.requests = requests
        lines = "\n".join(f"  {rid}: {cap}" for rid, cap in requests)
        super().__init__(
            f"{len(requests)} approval request(s) had no one to answer in this unattended run "
            f"(no widget or stdin front end, no answer from `cave approvals` within "
            f"${WAIT_ENV}), so they were denied:\n{lines}\n"
            "Decide them before the run: allow the capability in cave.toml or with "
            "`%cave policy allow CAPABILITY`, or give its ask rule a timeout "
            "(`ask CAPABILITY timeout=60 on_timeout=deny`) so a person can answer with "
            "`cave approvals approve ID` meanwhile."
        )


def is_unattended(parent: dict[str, Any] | None) -> bool:
    """Whether the request ``parent`` (a Jupyter message) comes from a run no one can answer."""
    forced = os.environ.get(ENV, "").strip()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    if not parent:
        return False  # not in a kernel cell: the CLI and control channel can still answer
    if parent.get("content", {}).get("allow_stdin"):
        return False
    return "cellId" not in (parent.get("metadata") or {})


DEFAULT_WAIT = 300.0


def unattended_wait(parent: dict[str, Any] | None) -> float | None:
    """Seconds a request without a timeout may wait in this run; None: as long as it takes."""
    forced = os.environ.get(ENV, "").strip()
    if forced in ("1", "true", "yes"):
        return 0.0
    if not is_unattended(parent):
        return None
    try:
        return max(0.0, float(os.environ.get(WAIT_ENV, DEFAULT_WAIT)))
    except ValueError:
        return DEFAULT_WAIT


_lock = threading.Lock()
_unanswered: list[tuple[str, str]] = []


def note_unanswered(request_id: str, capability: str) -> None:
    with _lock:
        _unanswered.append((request_id, capability))


def raise_unanswered() -> None:
    """Raise for the requests noted since the last call (the cell's turn); clear them."""
    with _lock:
        taken = list(_unanswered)
        _unanswered.clear()
    if taken:
        raise UnansweredInUnattendedRun(taken)


def clear_unanswered() -> None:
    """Forget notes left by a turn that ended in an exception (called as a cell starts)."""
    with _lock:
        _unanswered.clear()
