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
