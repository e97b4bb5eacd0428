"""Human approval of the agent's actions: a persisted queue, the kernel's channel, the widget.

See docs/approvals.md. Names load on first use, so ``install`` at kernel start costs no sqlite3 or
ipywidgets import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._channel import KernelApprovalChannel
    from ._cli import answer, decide, list_requests
    from ._console import AutoDenyChannel, ConsoleChannel
    from ._kernel_glue import install, session_channel
    from ._protocol import AnswerChannel, ApprovalChannel, ApprovalRequest, Decision
    from ._queue import AlreadyDecided, ApprovalQueue, ApprovalRecord, UnknownRequest
    from ._session_channel import make_channel
    from ._widget import ApprovalView, QuestionView

_WHERE = {
    "AnswerChannel": "._protocol",
    "ApprovalChannel": "._protocol",
    "ApprovalRequest": "._protocol",
    "AutoDenyChannel": "._console",
    "ConsoleChannel": "._console",
    "Decision": "._protocol",
    "AlreadyDecided": "._queue",
    "ApprovalQueue": "._queue",
    "ApprovalRecord": "._queue",
    "ApprovalView": "._widget",
    "KernelApprovalChannel": "._channel",
    "QuestionView": "._widget",
    "answer": "._cli",
    "UnknownRequest": "._queue",
    "decide": "._cli",
    "install": "._kernel_glue",
    "list_requests": "._cli",
    "make_channel": "._session_channel",
    "session_channel": "._kernel_glue",
}

__all__ = [
    "AlreadyDecided",
    "AnswerChannel",
    "ApprovalChannel",
    "ApprovalQueue",
    "ApprovalRecord",
    "ApprovalRequest",
    "ApprovalView",
    "AutoDenyChannel",
    "ConsoleChannel",
    "Decision",
    "KernelApprovalChannel",
    "QuestionView",
    "UnknownRequest",
    "answer",
    "decide",
    "install",
    "list_requests",
    "make_channel",
    "session_channel",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cave.approvals' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
