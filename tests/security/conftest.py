"""The fixture most security tests share: a secure session whose ``run`` executes agent code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from security_helpers import Session, make_session


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Session]:
    session = make_session(tmp_path)
    yield session
    session.security.close()
    session.log.close()
