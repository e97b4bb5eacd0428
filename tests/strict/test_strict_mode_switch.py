"""``%cave mode``: what it shows, switching both ways, and refusing strict mode with the reason.

The refusal is exercised with ``CAVE_STRICT_SIMULATE_UNSUPPORTED`` (the probe then reports
strict mode unavailable with that reason): this machine's kernel cannot be made to refuse.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from strict_helpers import needs_strict

from cave.testing import ScriptedKernel, reply

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedKernel]:
    env = {"CAVE_STRICT_SIMULATE_UNSUPPORTED": "Landlock is off (test override)"}
    with ScriptedKernel(workspace=tmp_path_factory.mktemp("refusing"), env=env) as kernel:
        yield kernel


def test_mode_shows_guard_and_the_machine(refusing: ScriptedKernel) -> None:
    cell = refusing.execute("%cave mode")
    assert cell.status == "ok", cell.all_text
    assert "mode: guard" in cell.stdout
    assert "NOT available" in cell.stdout and "Landlock is off (test override)" in cell.stdout


def test_asking_for_strict_where_it_cannot_be_enforced_is_an_error(
    refusing: ScriptedKernel,
) -> None:
    cell = refusing.execute("%cave mode strict")
    assert cell.status == "error"
    assert cell.error is not None and cell.error["ename"] == "StrictModeUnavailable"
    assert "Landlock is off (test override)" in cell.error["evalue"]
    assert "mode: guard" in refusing.execute("%cave mode").stdout  # unchanged, no fallback


def test_strict_mode_from_configuration_refuses_turns_instead_of_falling_back(
    refusing: ScriptedKernel,
) -> None:
    refusing.execute("import cave\ncave.session().mode = 'strict'")
    refusing.script(reply("", "x = 1"), reply("done"))
    cell = refusing.execute("%agent go", timeout=60)
    assert cell.status == "error", cell.all_text
    assert cell.error is not None and cell.error["ename"] == "StrictModeUnavailable"
    assert refusing.requests == []  # the model was never called: nothing ran anywhere
    refusing.execute("cave.session().mode = 'guard'")


def test_unknown_mode_is_refused(refusing: ScriptedKernel) -> None:
    cell = refusing.execute("%cave mode sandbox")
    assert cell.status == "error" and "strict" in cell.all_text


@needs_strict
def test_cave_toml_mode_and_switching_back(tmp_path: Path) -> None:
    (tmp_path / "cave.toml").write_text('mode = "strict"\n[policy]\n"env:HOME" = "allow"\n')
    with ScriptedKernel(workspace=tmp_path) as kernel:
        assert "strict mode is configured" in kernel.execute("%cave mode").stdout
        kernel.script(reply("", "import os\nwhere = os.getpid()"), reply("done"))
        assert kernel.execute("%agent go", timeout=90).status == "ok"
        shown = kernel.execute("%cave mode").stdout
        assert "mode: strict" in shown and "worker pid" in shown
        kpid = kernel.execute("import os, cave\nprint(os.getpid())").stdout.strip()
        assert kernel.execute("print(cave.retrieve('where'))").stdout.strip() != kpid
        assert "mode: guard" in kernel.execute("%cave mode guard").stdout
        kernel.script(reply("", "import os\nwhere = os.getpid()"), reply("done"))
        assert kernel.execute("%agent again", timeout=90).status == "ok"
        assert kernel.execute("print(cave.retrieve('where'))").stdout.strip() == kpid
