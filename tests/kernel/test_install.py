"""Kernelspec: the shipped file matches the generated one; `cave install` makes it discoverable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cave.kernel._install import kernelspec

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_kernelspec_matches_generated() -> None:
    shipped = json.loads((ROOT / "kernelspec" / "kernel.json").read_text())
    generated = kernelspec("python3")
    assert shipped == generated
    assert shipped["interrupt_mode"] == "message"
    assert shipped["display_name"] == "Cave (Python 3)"


def test_cave_install_prefix_is_listed_by_jupyter(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "cave.cli"]
    out = subprocess.run([*cli, "install", "--prefix", str(tmp_path)], capture_output=True,
                         text=True, check=True)
    assert "Installed the Cave kernelspec" in out.stdout
    spec = json.loads((tmp_path / "share/jupyter/kernels/cave/kernel.json").read_text())
    assert spec["argv"][:3] == [sys.executable, "-m", "cave"]
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "share/jupyter")}
    listing = subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
                             capture_output=True, text=True, check=True, env=env)
    kernels = json.loads(listing.stdout)["kernelspecs"]
    assert kernels["cave"]["resource_dir"].startswith(str(tmp_path))


def test_kernel_start_imports_no_heavy_module() -> None:
    """Start-up stays close to stock ipykernel: SDK, pandas, widgets, pickling stay lazy."""
    code = (
        "import sys\n"
        "from cave.kernel._kernel import CaveKernel\n"
        "import cave, cave._session\n"
        "heavy = [m for m in ('anthropic', 'pandas', 'ipywidgets', 'cloudpickle', 'numpy', 'httpx')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
