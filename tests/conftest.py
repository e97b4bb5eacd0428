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

from cave.kernel._install import write_kernelspec  # noqa: E402

write_kernelspec(_DATA / "kernels" / "cave", sys.executable)
