"""The example notebooks execute headlessly on the Cave kernel (offline: their scripted path)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.slow


def _execute(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    work = tmp_path / name
    shutil.copy(EXAMPLES / name, work)
    nb = nbformat.read(work, as_version=4)
    NotebookClient(nb, kernel_name="cave", timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.extend(str(v) for v in out.get("data", {}).values())
    return "\n".join(parts)


def test_quickstart_runs_offline_and_retrieves_the_agents_result(tmp_path: Path) -> None:
    nb = _execute("01-quickstart.ipynb", tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "Scripted demo server (not Claude)" in _text(code[0])
    first_turn = _text(code[2])
    assert "pivot_table" in first_turn and "out tokens" in first_turn
    # The real growth table, computed by the agent's code on the injected DataFrame, printed.
    assert all(region in first_turn for region in ("north", "south", "east", "west"))
    last = _text(code[-1])
    assert "amount" in last and "month" in last  # top_months rendered as a DataFrame


def test_typescript_tools_run_offline_and_a_fetch_outside_the_capabilities_is_refused(
    tmp_path: Path,
) -> None:
    nb = _execute("03-typescript-tools.ipynb", tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "Scripted demo server (not Claude)" in _text(code[0])
    registered = _text(code[1])
    assert "validate_orders(rows: Array<{ order_id: number;" in registered
    assert "'valid': 1" in registered
    turn = _text(code[2])
    assert "2 of 5 rows are valid" in turn  # computed by the TypeScript tool, printed by the agent
    assert "duplicate order_id 1003" in turn and 'unknown currency \\"YEN\\"' not in turn
    assert "unknown currency" in turn and "amount -5 is not positive" in turn
    assert "'valid': 2" in _text(code[3])
    refused = _text(code[5])
    assert "refused: tool 'fetch_rates' failed: PermissionError" in refused
    assert "net:collector.example.net:443 is outside the capabilities" in refused
    audit = _text(code[6])
    assert "tool.syscall" in audit and "fetch_rates" in audit


def test_skills_and_subagents_runs_offline_and_the_sub_agents_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nobody clicks in a headless run: the notebook then allows this one skill's code by policy.
    monkeypatch.setenv("CAVE_EXAMPLES_HEADLESS", "1")
    nb = _execute("05-skills-and-subagents.ipynb", tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "Scripted demo server (not Claude)" in _text(code[0])
    assert "frame-checks  [available]" in _text(code[1])
    used = _text(code[2])
    assert "row 1: negative amount -5.0" in used and "row 2: missing value" in used
    handed = _text(code[4])
    assert "write refused:" in handed and "cleaner:" in handed  # footer: per-agent usage
    assert "2 rows kept" in handed
    last = _text(code[5])
    assert "clean.csv exists: False" in last and "cleaner:" in last
    assert not (tmp_path / "clean.csv").exists()
