"""Shared set-up for the confinement tests: a small world to be confined from, and a runner.

Each action runs in a fresh ``python confinement_helper.py`` process whose parent is the pytest
process itself, so "the parent" in the actions (kill, ptrace, /proc/<ppid>/mem, its memory) is a
real process holding a real listener, a real buffer and real files: what the kernel will be.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cave.security._confinement import default_read_only_paths, strict_support

HELPER = Path(__file__).with_name("confinement_helper.py")
REPO = Path(__file__).resolve().parents[2]

needs_strict = pytest.mark.skipif(
    not strict_support().available,
    reason=f"the OS cannot confine here: {'; '.join(strict_support().reasons)}",
)


@dataclass
class World:
    ctx: dict[str, Any]
    spec: dict[str, Any]
    buffer: Any = field(repr=False)

    def run(self, action: str, *, spec: dict[str, Any] | None | str = "default",
            layers: str = "full", before: str | None = None,
            env: dict[str, str] | None = None, **ctx: Any) -> dict[str, Any]:
        """Run one action in a fresh process; the JSON result, plus its returncode."""
        request = {
            "action": action, "ctx": {**self.ctx, **ctx}, "layers": layers, "before": before,
            "spec": self.spec if spec == "default" else spec,
        }
        proc = subprocess.run(
            [sys.executable, str(HELPER), json.dumps(request)],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )
        lines = proc.stdout.strip().splitlines()
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {"ok": None}
        result["returncode"] = proc.returncode
        result["stderr"] = proc.stderr[-2000:]
        return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("confine")
    ro_dir, rw_dir, outside_dir = base / "ro", base / "rw", base / "outside"
    for d in (ro_dir, rw_dir, outside_dir):
        d.mkdir()
    (ro_dir / "data.txt").write_text("read-only data")
    (outside_dir / "secret.txt").write_text("outside secret")
    tcp = socket.create_server(("127.0.0.1", 0))
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"cave-confine-test-{uuid.uuid4().hex}"
    abstract.bind("\0" + abstract_name)
    abstract.listen(8)
    buffer = ctypes.create_string_buffer(b"original", 16)
    ctx = {
        "ro_dir": str(ro_dir), "ro_file": str(ro_dir / "data.txt"), "rw_dir": str(rw_dir),
        "outside_dir": str(outside_dir), "outside_file": str(outside_dir / "secret.txt"),
        "tcp_port": tcp.getsockname()[1], "abstract_name": abstract_name,
        "parent_buffer": ctypes.addressof(buffer),
    }
    spec = {"read_only": [*default_read_only_paths(), str(ro_dir)], "read_write": [str(rw_dir)]}
    yield World(ctx, spec, buffer)
    tcp.close()
    abstract.close()
