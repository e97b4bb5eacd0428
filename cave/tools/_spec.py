"""A registered tool (``ToolSpec``) and the limits each of its calls runs under (``ToolLimits``)."""

from __future__ import annotations

import keyword
from dataclasses import dataclass, replace
from typing import Any

from .._errors import ToolError
from ._signature import Signature

__all__ = ["MAX_SOURCE_BYTES", "ToolLimits", "ToolSpec", "check_name"]

MAX_SOURCE_BYTES = 1_000_000
RESERVED = frozenset({"call", "register", "unregister", "list", "describe", "limits"})
"""Names of the ``tools`` object's own methods: a tool cannot be called one of them."""


@dataclass(frozen=True)
class ToolLimits:
    """Limits on each call of a tool; a call that passes one fails with ``ToolError``."""

    timeout: float = 30.0
    """Wall-clock seconds the tool may run; time a syscall spends waiting for a person is not
    counted. At the limit the tool's worker is terminated (the process keeps serving)."""
    max_output_bytes: int = 1_000_000
    """Console output kept per call (UTF-8 bytes); the rest is cut, with a note saying how much."""
    max_syscalls: int = 1_000
    """Syscalls per call; later ones are refused (their promise rejects)."""
    max_result_bytes: int = 10_000_000
    """Size of the JSON result."""
    heap_mb: int = 512
    """V8 heap limit (``--max-old-space-size``) of every worker. Deno cannot survive one worker
    running out: the whole process dies, the call fails, and the next call starts a new one."""

    def with_timeout(self, seconds: float) -> ToolLimits:
        return replace(self, timeout=float(seconds))

    def with_max_output_bytes(self, n: int) -> ToolLimits:
        return replace(self, max_output_bytes=int(n))

    def with_max_syscalls(self, n: int) -> ToolLimits:
        return replace(self, max_syscalls=int(n))

    def with_heap_mb(self, mb: int) -> ToolLimits:
        return replace(self, heap_mb=int(mb))


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool: its source, its capabilities (its ceiling) and how to call it."""

    name: str
    source: str
    """The TypeScript, exactly as registered (and as approved, when the agent registered it)."""
    capabilities: tuple[str, ...]
    """Policy capability patterns, e.g. ``fs.read:data/**``; syscalls outside them are refused."""
    description: str
    signature: Signature
    digest: str
    """SHA-256 over name, source, capabilities and description (what an approval covers)."""
    registered_by: str
    """``user`` (a user cell) or ``agent`` (approved through the queue)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "capabilities": list(self.capabilities),
            "description": self.description,
            "signature": [self.signature.params, self.signature.returns, self.signature.doc],
            "digest": self.digest,
            "registered_by": self.registered_by,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ToolSpec:
        params, returns, doc = data["signature"]
        return cls(
            name=str(data["name"]),
            source=str(data["source"]),
            capabilities=tuple(str(c) for c in data["capabilities"]),
            description=str(data["description"]),
            signature=Signature(str(params), str(returns), str(doc)),
            digest=str(data["digest"]),
            registered_by=str(data["registered_by"]),
        )

    def describe(self) -> str:
        """Two lines for the manifest: the call, then what it does and what it may reach."""
        caps = ", ".join(self.capabilities) or "none (computes only)"
        text = self.description or self.signature.doc or "(no description)"
        return f"tools.{self.signature.text(self.name)}\n  {text} [capabilities: {caps}]"


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ToolError(
            f"{name!r} is not a usable tool name: use a Python identifier such as 'parse_records' "
            "(the agent calls it as tools.NAME(...))",
            kind="register",
        )
    if name.startswith("_") or name in RESERVED:
        raise ToolError(
            f"{name!r} is reserved (tools.{name} is a method, or private); pick another name",
            tool=name,
            kind="register",
        )
    return name
