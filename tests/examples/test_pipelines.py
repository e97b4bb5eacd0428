"""Pipelines: papermill and ``nbconvert --execute`` run Cave notebooks, and approvals never hang.

All offline: the notebooks start the scripted loopback server themselves. An approval in a run
that looks unattended (no widget or stdin front end) with no timeout in its rule waits
``CAVE_UNATTENDED_WAIT`` seconds for `cave approvals`, then fails the cell with a message naming
the fix; one whose rule has a timeout follows ``on_timeout``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow
pytest.importorskip("papermill")
pytest.importorskip("polars")


def _outputs(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for v in out.get("data", {}).values())
            parts.extend([out.get("ename", ""), out.get("evalue", "")])
    return "\n".join(parts)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CAVE_SESSION_DIR": str(tmp_path / "session"),
            "CAVE_CONFIG_DIR": str(tmp_path / "config"), "CAVE_AUTOCHECKPOINT": "0"}


def _check_totals(text: str, region: str) -> None:
    line = next(x for x in text.splitlines() if x.startswith(f"{{'region': '{region}'"))
    summary = eval(line)  # a dict literal printed by the agent's code
    assert summary["polars"] == summary["duckdb"] == summary["dask"], summary


def test_papermill_runs_the_data_stack_example_with_a_parameter(tmp_path: Path) -> None:
    out = tmp_path / "out.ipynb"
    subprocess.run(
        [str(BIN / "papermill"), str(EXAMPLES / "04-data-stack.ipynb"), str(out), "-k", "cave",
         "-p", "region", "south", "--cwd", str(tmp_path)],
        check=True, env=_env(tmp_path), timeout=170, capture_output=True,
    )
    text = _outputs(nbformat.read(out, as_version=4))
    assert "Scripted demo server (not Claude)" in text
    assert "polars.DataFrame" in text and "duckdb.DuckDBPyConnection" in text
    assert "partitions" in text and "table orders (~100,000 rows" in text
    _check_totals(text, "south")


def test_nbconvert_executes_the_data_stack_example(tmp_path: Path) -> None:
    work = tmp_path / "04.ipynb"
    shutil.copy(EXAMPLES / "04-data-stack.ipynb", work)
    subprocess.run(
        [str(BIN / "jupyter"), "nbconvert", "--to", "notebook", "--execute", "--inplace",
         "--ExecutePreprocessor.kernel_name=cave", "--ExecutePreprocessor.timeout=150", str(work)],
        check=True, env=_env(tmp_path), timeout=170, capture_output=True,
    )
    _check_totals(_outputs(nbformat.read(work, as_version=4)), "north")


def _work(tmp_path: Path) -> Path:
    """The kernel's cwd (its workspace); the target of the write is outside it, so it asks."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return work


def _asking_notebook(target: Path, policy: str) -> nbformat.NotebookNode:
    agent_code = f"fs.write({str(target)!r}, 'data')\nprint('written')"
    setup = (
        "import cave\nfrom cave.testing import AnthropicServer, reply\n"
        f"server = AnthropicServer([reply('Writing.', {agent_code!r}), reply('Finished.')])\n"
        "server.start()\n"
        "cave.session().use_endpoint(server.base_url)"
    )
    cells = [nbformat.v4.new_code_cell(setup)]
    if policy:
        cells.append(nbformat.v4.new_code_cell(policy))
    cells.append(nbformat.v4.new_code_cell("%%agent\nwrite the file"))
    cells.append(nbformat.v4.new_code_cell("print('after the agent cell')"))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "cave", "display_name": "Cave", "language": "python"}
    return nb


def test_unattended_approval_fails_the_cell_instead_of_hanging(tmp_path: Path) -> None:
    target = tmp_path / "outside" / "report.txt"
    target.parent.mkdir()
    src, out = tmp_path / "ask.ipynb", tmp_path / "ask-out.ipynb"
    nbformat.write(_asking_notebook(target, ""), src)
    env = {**_env(tmp_path), "CAVE_UNATTENDED_WAIT": "1"}  # the guess, with a short window
    done = subprocess.run(
        [str(BIN / "papermill"), str(src), str(out), "-k", "cave", "--cwd", str(_work(tmp_path))],
        env=env, timeout=170, capture_output=True, text=True,
    )
    assert done.returncode != 0  # the pipeline stops visibly
    text = _outputs(nbformat.read(out, as_version=4))
    assert "UnansweredInUnattendedRun" in text, text
    assert "no one to answer in this unattended run" in text and "fs.write:" in text
    assert "%cave policy allow" in text  # the message names the fix
    assert "after the agent cell" not in text
    assert not target.exists()
    audit = (tmp_path / "session" / "audit.jsonl").read_text().splitlines()
    decided = [json.loads(x) for x in audit if '"approval.decided"' in x]
    assert decided and all("expired" in json.dumps(d) for d in decided), decided


def test_unattended_approval_with_a_timeout_follows_on_timeout(tmp_path: Path) -> None:
    target = tmp_path / "outside" / "report.txt"
    target.parent.mkdir()
    rule = f"%cave policy ask fs.write:{target.parent}/** timeout=1 on_timeout=allow"
    src, out = tmp_path / "ask.ipynb", tmp_path / "ask-out.ipynb"
    nbformat.write(_asking_notebook(target, rule), src)
    subprocess.run(
        [str(BIN / "papermill"), str(src), str(out), "-k", "cave", "--cwd", str(_work(tmp_path))],
        env=_env(tmp_path), timeout=170, capture_output=True, check=True,
    )
    text = _outputs(nbformat.read(out, as_version=4))
    assert "after the agent cell" in text
    assert target.read_text() == "data"
    audit = (tmp_path / "session" / "audit.jsonl").read_text()
    assert '"approval.requested"' in audit  # it did ask, and silence was consent after 1 s
