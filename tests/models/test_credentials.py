"""Provider keys leave os.environ (and the C environment) for a private store."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from cave._errors import ConfigError
from cave.models import _credentials


@pytest.fixture(autouse=True)
def restore_store():
    saved = dict(_credentials._keys)
    yield
    _credentials._keys.clear()
    _credentials._keys.update(saved)


def _c_getenv(name: str) -> bytes | None:
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    return libc.getenv(name.encode())


def test_keys_move_out_of_the_environment(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "")
    monkeypatch.setenv("CAVE_UNRELATED", "stays")
    assert _c_getenv("ANTHROPIC_API_KEY") == b"sk-ant-secret"

    moved = _credentials.take_provider_keys_from_environ()

    assert set(moved) == {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_AUTH_TOKEN"}
    assert "ANTHROPIC_API_KEY" not in os.environ and "OPENAI_API_KEY" not in os.environ
    assert _c_getenv("ANTHROPIC_API_KEY") is None  # gone from the C-level environ too
    assert os.environ["CAVE_UNRELATED"] == "stays"
    assert _credentials.get_key("anthropic") == "sk-ant-secret"
    assert _credentials.get_key("openai") == "sk-openai-secret"
    assert _credentials.get_key("anthropic_auth_token") is None  # empty: removed, not stored
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('ANTHROPIC_API_KEY'))"],
        capture_output=True, text=True, check=True, timeout=30)
    assert child.stdout.strip() == "None"
    assert _credentials.take_provider_keys_from_environ() == []  # nothing left to take


def test_set_get_forget():
    _credentials.set_key("anthropic", "sk-typed")
    assert _credentials.get_key("anthropic") == "sk-typed"
    assert "sk-typed" not in os.environ.values()
    _credentials.forget_key("anthropic")
    assert _credentials.get_key("anthropic") is None
    _credentials.forget_key("anthropic")  # twice is fine


@pytest.mark.parametrize("bad", ["", " sk-x", "sk-x\n"])
def test_set_key_refuses_blank_or_padded_keys(bad):
    with pytest.raises(ConfigError, match="without surrounding spaces"):
        _credentials.set_key("anthropic", bad)
