"""The [budget] table of cave.toml, parsed at the edge: the project's file wins over the user's."""

from __future__ import annotations

from pathlib import Path

import pytest

from cave._errors import ConfigError
from cave.agent._budget import Budget
from cave.kernel._budget_magics import budget_from_toml


def test_user_then_project_tables_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "config"
    user.mkdir()
    monkeypatch.setenv("CAVE_CONFIG_DIR", str(user))
    (user / "cave.toml").write_text("[budget]\nturn-cost = 1.0\nsession-cost = 10\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "cave.toml").write_text("[budget]\nturn-cost = 0.5\ncontext-window = 100000\n"
                                       '[policy]\n"shell:git" = "ask"\n')
    budget, window = budget_from_toml(project, Budget())
    assert budget == Budget(turn_cost=0.5, session_cost=10.0) and window == 100_000


def test_a_bad_table_names_the_file_and_the_fix(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAVE_CONFIG_DIR", str(tmp_path / "none"))
    (tmp_path / "cave.toml").write_text("[budget]\nturn-cost = 'cheap'\n")
    with pytest.raises(ConfigError, match=r"cave.toml \[budget\].*needs a number"):
        budget_from_toml(tmp_path, Budget())


def test_kernel_traits_become_the_budget() -> None:
    from types import SimpleNamespace

    from cave.kernel._budget_magics import budget_from_traits
    from cave.kernel._kernel import CaveKernel

    assert {"turn_cost", "session_cost", "turn_tokens", "session_tokens", "turn_steps",
            "session_steps", "context_window"} <= set(CaveKernel.class_trait_names(config=True))
    kernel = SimpleNamespace(turn_steps=None, turn_tokens=None, turn_cost=0.5, session_steps=None,
                             session_tokens=2_000_000, session_cost=None)
    assert budget_from_traits(kernel) == Budget(turn_cost=0.5, session_tokens=2_000_000)
    with pytest.raises(ConfigError, match="turn_cost must be above 0"):
        budget_from_traits(SimpleNamespace(**{**vars(kernel), "turn_cost": 0}))
