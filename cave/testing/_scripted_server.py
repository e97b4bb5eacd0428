"""One loopback Anthropic server whose replies each test sets, shared by several kernels.

``ScriptedKernel`` pairs one server with one kernel; tests that start more than one kernel against
the same script (a checkpoint resumed in a fresh kernel, a gateway) use this directly. The
replies are fixtures written in advance, not a model.
"""

from __future__ import annotations

from typing import Any

from ._anthropic_server import AnthropicServer
from ._script import Failure, Reply

__all__ = ["ScriptedServer"]


class ScriptedServer:
    """``AnthropicServer`` answering from ``replies`` in order; a 500 when they run out."""

    def __init__(self) -> None:
        self.replies: list[Reply | Failure] = []
        self.server = AnthropicServer(self._next)
        self.server.start()

    def script(self, *replies: Reply | Failure) -> int:
        """The replies the next requests get, in order; returns how many requests came before."""
        self.replies = list(replies)
        return len(self.server.requests)

    def env(self) -> dict[str, str]:
        """What a kernel needs in its environment to talk to this server."""
        return {"ANTHROPIC_BASE_URL": self.server.base_url, "ANTHROPIC_API_KEY": "sk-ant-test"}

    def stop(self) -> None:
        self.server.stop()

    def _next(self, request: dict[str, Any]) -> Reply | Failure:
        if not self.replies:
            return Failure(500, "api_error", "the test script has no reply left")
        return self.replies.pop(0)
