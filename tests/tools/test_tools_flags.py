"""The Deno command line and environment (pure functions), and signatures from ``deno doc``."""

from __future__ import annotations

from pathlib import Path

import pytest

from cave._errors import ToolError
from cave.tools._flags import deno_command, deno_env, permission_flags
from cave.tools._process import deno_binary
from cave.tools._signature import parse_doc, read_signature

CAPABILITY_SETS = [
    (),
    ("fs.read:data/**",),
    ("fs:**", "shell:*", "net:*", "env:*", "tool:*"),
    ("net:api.example.com:443", "env:GITHUB_TOKEN", "fs.write:/tmp/**"),
]


@pytest.mark.parametrize("capabilities", CAPABILITY_SETS)
def test_no_capability_becomes_a_deno_permission(capabilities: tuple[str, ...]) -> None:
    assert permission_flags(capabilities) == ()


def test_the_command_line_is_exactly_this() -> None:
    assert deno_command("/x/deno", "/r/main.ts", heap_mb=128) == [
        "/x/deno", "run", "--quiet", "--no-prompt", "--no-remote", "--no-npm", "--cached-only",
        "--no-config", "--no-lock", "--no-check", "--unstable-worker-options",
        "--v8-flags=--max-old-space-size=128", "/r/main.ts",
    ]
    flags = deno_command("d", "r", heap_mb=64)
    assert not any(flag.startswith(("--allow", "-A")) for flag in flags)
    with pytest.raises(ValueError, match="at least 16"):
        deno_command("d", "r", heap_mb=1)


def test_the_environment_is_built_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-pass")
    env = deno_env("/s/deno")
    assert env == {
        "DENO_DIR": "/s/deno", "DENO_NO_UPDATE_CHECK": "1", "DENO_NO_PROMPT": "1",
        "NO_COLOR": "1", "PATH": "/nonexistent",
    }


def test_deno_doc_reads_the_signature_offline(tmp_path: Path) -> None:
    source = tmp_path / "t.ts"
    source.write_text(
        "/** Validate records.\n *\n * More text. */\n"
        "export async function run(args: { rows: Array<Record<string, unknown>>; "
        "mode?: 'strict' | 'lax'; limits: [number, number] }, cave: unknown): "
        "Promise<{ valid: number; errors: string[] }> { return { valid: 0, errors: [] }; }\n"
    )
    sig = read_signature(deno_binary(), source, tmp_path / "deno")
    assert sig.params == (
        '(rows: Array<Record<string, unknown>>, mode?: "strict" | "lax", '
        "limits: [number, number])"
    )
    assert sig.returns == "Promise<{ valid: number; errors: string[] }>"
    assert sig.doc == "Validate records."


def test_a_run_without_an_object_parameter_and_no_run_at_all() -> None:
    doc = {"nodes": {"f": {"symbols": [{"name": "run", "declarations": [
        {"kind": "function", "def": {"params": [
            {"name": "args", "tsType": {"kind": "typeRef", "repr": "Args",
                                        "value": {"typeName": "Args"}}}]}}]}]}}}
    sig = parse_doc(doc)
    assert sig.params == "(**args: Args)" and sig.returns == "unknown"
    with pytest.raises(ToolError, match="export async function run"):
        parse_doc({"nodes": {"f": {"symbols": [{"name": "other", "declarations": []}]}}})
