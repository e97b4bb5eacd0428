"""`cave run`: one agent turn in a terminal, and a notebook executed on the Cave kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat

CLI = [sys.executable, "-m", "cave.cli"]


def _env(tmp_path: Path, script: list[dict[str, object]]) -> dict[str, str]:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    return {**os.environ, "CAVE_SCRIPT": str(path)}


def test_run_a_request_in_the_terminal(tmp_path: Path) -> None:
    script = [{"text": "Counting.", "code": ["total = sum(range(10))\nprint('total is', total)"]},
              {"text": "The total is 45."}]
    out = subprocess.run([*CLI, "run", "add up 0..9"], cwd=tmp_path, env=_env(tmp_path, script),
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "--- agent code (step 1) ---" in out.stdout
    assert "total is 45" in out.stdout
    assert "The total is 45." in out.stdout
    assert "2 steps" in out.stdout and "scripted (test fixture)" in out.stdout
    assert (tmp_path / ".cave" / "audit.jsonl").exists()  # the authority layer was on
    verify = subprocess.run([*CLI, "audit", "verify"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0 and "chain intact" in verify.stdout


def test_run_reports_a_bad_request_without_a_traceback(tmp_path: Path) -> None:
    out = subprocess.run([*CLI, "run", "hello"], cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")},
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "ANTHROPIC_API_KEY" in out.stderr and "Traceback" not in out.stderr


def test_run_executes_a_notebook_on_the_cave_kernel(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import cave\ncave.inject('n', 20)"),
                nbformat.v4.new_code_cell("%agent double n"),
                nbformat.v4.new_code_cell("print(cave.retrieve('doubled'))")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    script = [{"code": ["doubled = n * 2"]}, {"text": "Doubled."}]
    out = subprocess.run([*CLI, "run", str(path), "-o", str(tmp_path / "out.ipynb")],
                         cwd=tmp_path, env=_env(tmp_path, script), capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    done = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert done.cells[2].outputs[0]["text"].strip() == "40"
