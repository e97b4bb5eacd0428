"""``tools``: the agent's handle on the session's TypeScript tools (a primitive namespace).

``tools.NAME(**args)`` and ``tools.call(name, **args)`` run a tool; ``tools.register(...)`` is an
approval request (the widget shows the full source and the capabilities) before the tool
exists. The object holds only the session's ``Tools``; it adds no authority of its own: every
effect of a tool is a syscall checked by the policy.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

from ._registry import Tools

__all__ = ["AgentTools"]


class AgentTools:
    """TypeScript tools run in Deno: tools.NAME(**args), tools.call, tools.register, tools.list."""

    __slots__ = ("_tools",)

    def __init__(self, tools: Tools) -> None:
        self._tools = tools

    def call(self, name: str, /, **args: Any) -> Any:
        """Run a registered tool with keyword arguments; returns its JSON result."""
        return self._tools.call(name, **args)

    def register(
        self,
        name: str,
        source: str,
        capabilities: list[str] | None = None,
        description: str = "",
    ) -> str:
        """Ask the user to approve a new TypeScript tool (exporting `async function run(args,
        cave)`) with capabilities such as 'fs.read:data/**'; returns its signature."""
        if isinstance(source, Path):
            source = str(source)
        spec = self._tools.register(name, source, capabilities or (), description)
        return spec.signature.text(name)

    def list(self) -> builtins.list[str]:
        """Signatures of the registered tools."""
        return [s.signature.text(n) for n, s in self._tools.specs.items()]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        tools = self._tools

        def run(**args: Any) -> Any:
            return tools.call(name, **args)

        if name not in tools.specs:
            known = ", ".join(sorted(tools.specs)) or "none yet"
            raise AttributeError(
                f"no tool named {name!r} (registered: {known}); tools.register(...) adds one"
            )
        run.__name__ = name
        run.__doc__ = tools.specs[name].describe()
        return run

    def __dir__(self) -> builtins.list[str]:
        return ["call", "list", "register", *self._tools.specs]

    def __repr__(self) -> str:
        return f"<cave primitive tools: {', '.join(self._tools.specs) or 'no tools registered'}>"


