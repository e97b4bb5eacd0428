"""Test-wide setup: a private Jupyter data dir holding the Cave kernelspec, and a clean model env.

Set before anything imports jupyter_client, so ``kernel_name="cave"`` resolves for nbclient and the
conformance suite without installing anything into the user's Jupyter.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_DATA = Path(tempfile.mkdtemp(prefix="cave-tests-jupyter-"))
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    [str(_DATA), *filter(None, [os.environ.get("JUPYTER_PATH")])]
)
for _var in (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "CAVE_SCRIPT",
    "CAVE_MODEL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "CAVE_SESSION_DIR",
    "CAVE_CHECKPOINTS",
    "CAVE_RESUME",
    "CAVE_AUTOCHECKPOINT",
    "CAVE_AUTOCHECKPOINT_KEEP",
):
    os.environ.pop(_var, None)
# Kernels auto-checkpoint: keep their signing secret out of the real ~/.config.
os.environ["CAVE_CONFIG_DIR"] = str(_DATA / "config")

import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from cave.kernel._install import write_kernelspec  # noqa: E402

write_kernelspec(_DATA / "kernels" / "cave", sys.executable)


PROVIDER_THREADS = ("cave-anthropic", "cave-openai")
"""Loopback servers, their connections and the models' stream workers are named so."""


@pytest.fixture(autouse=True)
def no_leaked_provider_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """In the model and loopback-server tests, no thread may outlive the test that started it.

    Not for kernel tests: a module's kernel keeps its HTTP connections (and their server
    threads) open across tests on purpose.
    """
    if request.node.path.parent.name not in ("models", "testing"):
        yield
        return
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        extra = [t.name for t in threading.enumerate()
                 if t not in before and t.name.startswith(PROVIDER_THREADS)]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert extra == []
