"""TypeScript tools run in Deno, reaching the world only through Cave's primitives.

From a user cell::

    cave.tools.register("parse", source, capabilities=["fs.read:data/**"], description="...")
    cave.tools.call("parse", rows=[...])          # a Python value, or cave.ToolError

The agent has the same tools as ``tools.NAME(**args)``; its ``tools.register`` is an approval.

What is enforced, exactly: a tool runs in its own Web Worker of one Deno process per session,
started with no ``--allow-*`` flag at all and with ``permissions: "none"`` for every worker, so
``Deno.readTextFile``, ``Deno.Command``, ``fetch`` and ``Deno.env`` fail with Deno's
``NotCapable`` error. Its only way out is a syscall (``cave.fs.read`` ...) that Cave's broker
checks first against the tool's registered capabilities (outside them: refused, nobody asked),
then runs as the session's own primitive (policy, approvals, audit). Not enforced: CPU and memory
beyond the per-call limits (``ToolLimits``); a tool can still compute, use its time budget, keep
state between its own calls (never another tool's: workers share nothing), and leave timers
running in its worker after a call returns (they can make no syscalls until its next call).
Tools are single files: a source with an import is refused at registration.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import ToolError
from ._spec import ToolLimits, ToolSpec

if TYPE_CHECKING:
    from ._registry import Tools

__all__ = ["ToolLimits", "ToolSpec", "call", "register", "registered", "set_limits", "unregister"]


def _tools() -> Tools:
    from .._session import current_session

    session = current_session()
    session.ensure_security()
    tools: Tools | None = session.tools
    if tools is None:
        raise ToolError(
            "this session runs without Cave's security layer, and tools need it for every "
            "syscall; start the session with security on (the default)",
            kind="register",
        )
    return tools


def register(
    name: str,
    source: str | Path,
    capabilities: Any = (),
    description: str | None = None,
) -> ToolSpec:
    """Register (or replace) TypeScript tool ``name``: ``source`` text or a ``.ts`` path that
    exports ``async function run(args, cave)``; ``capabilities`` are its ceiling."""
    return _tools().register(name, source, capabilities, description)


def call(name: str, /, **args: Any) -> Any:
    """Run tool ``name`` with keyword ``args``; its JSON result as Python objects."""
    return _tools().call(name, **args)


def unregister(name: str) -> None:
    """Forget tool ``name``."""
    _tools().unregister(name)


def registered() -> dict[str, ToolSpec]:
    """The registered tools, by name."""
    return dict(_tools().specs)


def set_limits(limits: ToolLimits) -> None:
    """Use ``limits`` for the next calls (a new ``heap_mb`` applies from the next process)."""
    if not isinstance(limits, ToolLimits):
        raise TypeError(f"set_limits takes a ToolLimits, not {type(limits).__name__}")
    from ._registry import _is_agent_thread

    if _is_agent_thread():
        raise PermissionError("agent code may not change the tools' limits; the user sets them")
    _tools().limits = limits
