"""Large outputs stay in the runtime: the whole text of a cut output in ``_output_N``.

The model sees a step's output cut to its head and tail (``Capture``). When a step printed more
than that, the whole text is bound in the agent namespace as ``_output_1``, ``_output_2``, ... (one
name per output, never reused in a namespace, also after a checkpoint restore), and the model's
view ends with a line naming it, so the model can slice or search the output instead of re-running
slow or unrepeatable code. Compaction keeps that line (``KEPT_PREFIX``).

Kept per output: at most ``MAX_KEPT_CHARS`` characters (the first ones); past that the line says
how much was not kept. The text stays in memory like any other variable: ``del _output_3`` frees
it, and checkpoints save it.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

__all__ = ["KEPT_PREFIX", "MAX_KEPT_CHARS", "OutputNames", "kept_line"]

MAX_KEPT_CHARS = 64 * 1024 * 1024
"""Characters of one output kept whole (64 Mi characters); beyond that only the head is kept."""
KEPT_PREFIX = "[The whole output"
_NAME = re.compile(r"_output_(\d+)$")


class OutputNames:
    """Hands out ``_output_N`` names for one namespace, never one it holds or handed out before."""

    def __init__(self) -> None:
        self._last: int | None = None

    def keep(self, namespace: MutableMapping[str, Any], text: str, total: int) -> str:
        """Bind ``text`` under a new name in ``namespace``; return the name.

        The namespace is scanned once (it may hold names from a restored checkpoint); after
        that only the next name is probed, so a step's cost does not grow with the namespace."""
        if self._last is None:
            taken = [int(m.group(1)) for n in list(namespace)
                     if isinstance(n, str) and (m := _NAME.match(n))]
            self._last = max(taken, default=0)
        self._last += 1
        while f"_output_{self._last}" in namespace:
            self._last += 1
        name = f"_output_{self._last}"
        namespace[name] = text
        return name


def kept_line(name: str, kept: int, total: int) -> str:
    """The line the model reads after a cut output."""
    if kept < total:
        return (f"{KEPT_PREFIX} was {total:,} characters; the first {kept:,} are in the variable "
                f"`{name}` (str): slice or search it instead of re-running the code.]")
    return (f"{KEPT_PREFIX} ({total:,} characters) is in the variable `{name}` (str): slice or "
            "search it instead of re-running the code.]")
