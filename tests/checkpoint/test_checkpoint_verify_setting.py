"""``CAVE_CHECKPOINT_VERIFY_EVERY`` reaches the session's store, and bad values are refused."""

from __future__ import annotations

import pytest

from cave._errors import CheckpointError
from cave.checkpoint._session_store import verify_every


@pytest.mark.parametrize(("value", "every"), [(None, 1), ("0", 0), ("5", 5), (" ", 1)])
def test_the_setting(monkeypatch, value, every):
    if value is None:
        monkeypatch.delenv("CAVE_CHECKPOINT_VERIFY_EVERY", raising=False)
    else:
        monkeypatch.setenv("CAVE_CHECKPOINT_VERIFY_EVERY", value)
    assert verify_every() == every


@pytest.mark.parametrize("value", ["-1", "often", "1.5"])
def test_a_bad_value_names_the_fix(monkeypatch, value):
    monkeypatch.setenv("CAVE_CHECKPOINT_VERIFY_EVERY", value)
    with pytest.raises(CheckpointError, match="set it to 0"):
        verify_every()
