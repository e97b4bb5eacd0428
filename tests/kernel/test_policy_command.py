"""`%cave policy` through a real kernel: shown, changed for the session, enforced, audited."""

from __future__ import annotations

import json
from pathlib import Path

from cave.testing import AnthropicServer, KernelHarness, reply


def test_policy_is_shown_changed_enforced_and_audited(tmp_path: Path) -> None:
    code = "try:\n    shell.run(['true'])\nexcept PermissionError as e:\n    print('NO:', e)"
    script = [reply("", code), reply("Denied, as the policy says.")]
    with AnthropicServer(script) as server, KernelHarness(
        cwd=tmp_path, env={"ANTHROPIC_BASE_URL": server.base_url, "ANTHROPIC_API_KEY": "k"}
    ) as kernel:
        shown = kernel.execute("%cave policy")
        assert shown.status == "ok", shown.all_text
        assert "fs.write" in shown.stdout and "anything else: ask" in shown.stdout

        bad = kernel.execute("%cave policy allow bogus:thing")
        assert bad.error is not None and bad.error["ename"] == "ConfigError"
        assert "unknown capability kind 'bogus'" in bad.error["evalue"]
        assert "%cave policy allow|ask|deny CAPABILITY" in bad.error["evalue"]

        changed = kernel.execute("%cave policy deny shell:*")
        assert changed.status == "ok", changed.all_text
        assert "deny    shell:*" in changed.stdout

        # No widget, no prompt: a deny rule answers at once, and the model is told why.
        cell = kernel.execute("%agent run true", timeout=30)
        assert cell.status == "ok", cell.all_text
        assert "NO:" in cell.stdout and "shell" in cell.stdout
        assert not cell.of_type("comm_open")

    log = (tmp_path / ".cave" / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in log]
    kinds = [r["kind"] for r in records]
    assert any(k.startswith("policy") for k in kinds), kinds
    assert any("shell" in json.dumps(r) and "deny" in json.dumps(r) for r in records)
