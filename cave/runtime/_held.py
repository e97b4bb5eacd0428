"""Values held as bytes that only agent code may load (strict mode's ``WorkerValue``).

A type the strict-mode layer and the runtime share, so it lives in the lower one. The bytes were
written by confined agent code and can run any code when loaded, so nothing loads them outside
agent code: the in-process (guard-mode) executor loads them at the start of a step, under the
step's timeout, stop button and output capture, inside the caller's agent-code block, where the
agent's own code is about to run with the same authority.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoadsAsAgentCode", "load_held"]


class LoadsAsAgentCode:
    """Base of a held value; ``load`` returns the live object (running what the bytes name)."""

    __slots__ = ()
    type_name: str
    """The held value's type, as the agent's variable list shows it (``function``, ``Box``)."""

    def load(self, namespace: dict[str, Any]) -> Any:
        raise NotImplementedError


def load_held(namespace: dict[str, Any]) -> None:
    """Replace held values in ``namespace`` by what they load to; one that fails stays held (its
    repr says what it is). Call only where agent code runs."""
    for name, value in list(namespace.items()):
        if isinstance(value, LoadsAsAgentCode):
            try:
                namespace[name] = value.load(namespace)
            except Exception:
                pass
