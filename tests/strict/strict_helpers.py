"""A scripted Cave kernel in strict mode, and the widget clicker the strict tests share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cave.security._confinement import strict_support
from cave.testing import ApprovalWidgets, ScriptedKernel, approval_clicker

HARMLESS_ENV = ("HOME", "PATH", "LANG", "LC_ALL", "TZ", "TERM", "USER", "SHELL")

needs_strict = pytest.mark.skipif(
    not strict_support().available,
    reason="strict mode cannot be enforced here: " + "; ".join(strict_support().reasons),
)


class StrictKernel(ScriptedKernel):
    """A scripted kernel switched to strict mode, with a directory outside its workspace."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.outside = root / "outside"
        workspace = root / "workspace"
        for d in (self.outside, workspace):
            d.mkdir(parents=True, exist_ok=True)
        # Libraries read these while importing (pandas reads HOME); the environment rule's own
        # defaults (issue-10-secrets) allow them too.
        (workspace / "cave.toml").write_text(
            "[policy]\n" + "".join(f'"env:{n}" = "allow"\n' for n in HARMLESS_ENV))
        super().__init__(workspace=workspace,
                         env={"CAVE_SESSION_DIR": str(workspace / ".cave"), **(env or {})})

    def start(self) -> StrictKernel:
        super().start()
        cell = self.execute("%cave mode strict", timeout=90)
        assert cell.status == "ok", cell.all_text
        assert "mode: strict" in cell.stdout, cell.all_text
        return self

    def tool_results(self) -> str:
        """What the model was sent back after running code, in the last request."""
        return json.dumps(self.requests[-1].body["messages"][-1])

    def value(self, expr: str) -> str:
        """``print(expr)`` in a user cell; its stdout, stripped."""
        cell = self.execute(f"import cave\nprint({expr})")
        assert cell.status == "ok", cell.all_text
        return str(cell.stdout.strip())


Widgets = ApprovalWidgets
clicker = approval_clicker
