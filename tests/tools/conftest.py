"""One secure session with a real Deno process per test module (starting Deno costs ~0.3 s)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tools_helpers import make_session  # noqa: E402

from cave._session import Session  # noqa: E402


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    workspace = tmp_path_factory.mktemp("tools-ws")
    (workspace / "data").mkdir()
    (workspace / "data" / "small.txt").write_text("hello from a file\n")
    s = make_session(
        workspace,
        ("fs.read:/etc/**", "deny"),
        ("net:denied.example:443", "deny"),
        ("env:CAVE_TOOL_TEST", "allow"),
    )
    yield s
    s.tools.close()
    s.security.close()
