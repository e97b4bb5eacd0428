"""Which cell a waiting approval belongs to, for threads that were started without its context.

The kernel registers :func:`remember_cell_context` as a ``pre_run_cell`` hook; the channel asks
:func:`cell_context_for_thread` before it shows a widget.
"""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = ["cell_context_for_thread", "remember_cell_context"]

_IN_CELL: contextvars.ContextVar[bool] = contextvars.ContextVar("cave_approval_cell", default=False)
_cell_context: contextvars.Context | None = None


def remember_cell_context(*_info: Any) -> None:
    """``pre_run_cell`` hook: keep the running cell's context for threads started without it.

    ipykernel routes output (and stdin) by the parent message held in context variables. A thread
    started with plain ``threading.Thread`` has an empty context, and ipykernel then falls back to
    the *last* message it handled, which may be a widget click's ``comm_msg``: the widget would be
    sent to no cell. ``decide`` called from such a thread runs in a copy of this context instead.
    """
    global _cell_context
    _IN_CELL.set(True)
    _cell_context = contextvars.copy_context()


def cell_context_for_thread() -> contextvars.Context | None:
    """A copy of the running cell's context if the calling thread lacks one, else None."""
    if _IN_CELL.get() or _cell_context is None:
        return None
    return _cell_context.copy()
