"""A Cave kernel wired to a loopback Anthropic server whose replies each test sets.

The pattern every end-to-end test needs: one server and one kernel for a whole module (starting a
kernel costs about a second), a fresh script per test, and the requests that test caused. The
replies are fixtures written in advance, not a model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._env import SESSION_DIR_ENV
from ._anthropic_server import AnthropicServer
from ._kernel_harness import KernelHarness
from ._loopback import RecordedRequest
from ._script import Failure, Reply


class ScriptedKernel:
    """``AnthropicServer`` + ``KernelHarness`` pointed at it, in a private working directory."""

    def __init__(self, *, workspace: str | Path | None = None,
                 env: Mapping[str, str] | None = None, **harness: Any) -> None:
        self._own_workspace = workspace is None
        self.workspace = Path(workspace or tempfile.mkdtemp(prefix="cave-scripted-"))
        self._replies: list[Reply | Failure] = []
        self._seen = 0
        self.server = AnthropicServer(self._next)
        self._env = dict(env or {})
        self._harness = harness
        self.kernel: KernelHarness | None = None

    def start(self) -> ScriptedKernel:
        self.server.start()
        env = {"ANTHROPIC_BASE_URL": self.server.base_url, "ANTHROPIC_API_KEY": "sk-ant-test",
               SESSION_DIR_ENV: str(self.workspace / ".cave"), **self._env}
        self.kernel = KernelHarness(env=env, cwd=self.workspace, **self._harness).start()
        return self

    def stop(self) -> None:
        try:
            if self.kernel is not None:
                self.kernel.stop()
        finally:
            self.server.stop()
            if self._own_workspace:
                shutil.rmtree(self.workspace, ignore_errors=True)

    def __enter__(self) -> ScriptedKernel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *replies: Reply | Failure) -> None:
        """The replies the next requests get, in order; requests are counted from here."""
        self._replies = list(replies)
        self._seen = len(self.server.requests)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests the server received since the last ``script()``."""
        return self.server.requests[self._seen :]

    @property
    def session_dir(self) -> Path:
        """The kernel's session dir (pinned, so an exported CAVE_SESSION_DIR cannot leak in)."""
        return Path(self._env.get(SESSION_DIR_ENV) or self.workspace / ".cave")

    def execute(self, code: str, **kwargs: Any) -> Any:
        assert self.kernel is not None, "call start() first"
        return self.kernel.execute(code, **kwargs)

    def _next(self, request: dict[str, Any]) -> Reply | Failure:
        if not self._replies:
            return Failure(500, "api_error", "the test script has no reply left: add one")
        return self._replies.pop(0)
