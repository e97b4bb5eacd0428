"""The Cave kernelspec: generated here, installed with ``cave install``.

``kernelspec/kernel.json`` at the top of the repository is the same spec for
``jupyter kernelspec install kernelspec/``; a test keeps the two in agreement.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

KERNEL_NAME = "cave"
DISPLAY_NAME = "Cave (Python 3)"
RESOURCES = Path(__file__).parent / "resources"


def kernelspec(python: str | None = None) -> dict[str, Any]:
    """The kernel.json content. ``interrupt_mode: message`` lets the stop button cancel a turn
    that is waiting (for the model, or for an approval) without waiting for the next message."""
    return {
        "argv": [python or sys.executable, "-m", "cave", "-f", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {"debugger": True},
    }


def write_kernelspec(directory: Path, python: str | None = None) -> Path:
    """Write kernel.json and the logos into ``directory``; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kernel.json").write_text(json.dumps(kernelspec(python), indent=1) + "\n")
    for logo in RESOURCES.glob("logo-*.png"):
        shutil.copy(logo, directory / logo.name)
    return directory


def install(
    *,
    user: bool = False,
    prefix: str | None = None,
    sys_prefix: bool = False,
    name: str = KERNEL_NAME,
) -> str:
    """Install the kernelspec like ``jupyter kernelspec install``; returns the install path."""
    from jupyter_client.kernelspec import KernelSpecManager

    if sys_prefix:
        prefix = sys.prefix
    with tempfile.TemporaryDirectory() as tmp:
        source = write_kernelspec(Path(tmp) / name)
        return str(
            KernelSpecManager().install_kernel_spec(
                str(source), kernel_name=name, user=user, prefix=prefix
            )
        )
