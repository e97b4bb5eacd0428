"""How a session gets its tools: one call from ``Session.ensure_security``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._agent import AgentTools
from ._registry import Tools
from ._spec import ToolSpec

__all__ = ["TOOLS_DOC", "attach_tools"]

TOOLS_DOC = """tools: TypeScript tools run in Deno; each reaches files, network, env and programs
  only through Cave's primitives, within the capabilities it was registered with.
  tools.NAME(**args) / tools.call(name, **args)
      Run a registered tool (listed with the objects below); returns its JSON result.
  tools.register(name, source, capabilities=[...], description="") -> str
      Ask the user to approve a new tool: TypeScript exporting `async function run(args, cave)`,
      where cave.fs.read/write/list, cave.net.fetch, cave.env.get, cave.shell.run and
      cave.human.ask are its only way out; capabilities like 'fs.read:data/**', 'net:host:443'."""


def attach_tools(session: Any) -> Tools | None:
    """Give ``session`` its ``Tools`` (once): the ``tools`` primitive, a manifest section, the
    primitives' documentation and a part of every checkpoint.

    ``session`` is a ``cave.Session`` (typed ``Any``: the session imports us, not the reverse).
    """
    existing: Tools | None = getattr(session, "tools", None)
    if existing is not None or session.security is None:
        return existing
    security = session.security
    audit = session.audit
    assert audit is not None  # built with the security layer
    tools = Tools(
        workspace=session.workspace,
        directory=session.directory / "tools",
        primitives=lambda: security.primitives,
        record=audit.record,
    )
    session.tools = tools
    session.runtime.add_primitive("tools", AgentTools(tools))
    session.runtime.manifest_sections.append(tools.describe)
    session.primitives_doc = session.primitives_doc.rstrip() + "\n" + TOOLS_DOC
    session.state_parts["tools"] = (tools.snapshot, lambda data: _prepare(tools, data))
    return tools


def _prepare(tools: Tools, data: Any) -> Callable[[], None]:
    """Check a checkpoint's tools now (ValueError if malformed); the returned step installs them."""
    items = list(data or ())
    for item in items:
        ToolSpec.from_dict(item)
    return lambda: tools.restore(items)
