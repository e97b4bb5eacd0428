"""``cave checkpoints ...`` (the parser the `cave` command mounts), run as a user would."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from cave.checkpoint import SessionStore
from cave.checkpoint._cli import main


@pytest.fixture
def session(tmp_path, monkeypatch):
    monkeypatch.setenv("CAVE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.delenv("CAVE_CHECKPOINTS", raising=False)
    session_dir = tmp_path / ".cave"
    store = SessionStore(session_dir / "checkpoints")
    ns = {"arr": np.arange(1000), "note": "hi", "gen": (i for i in range(2))}
    store.save("first", ns, {"messages": ["a"]})
    ns["arr"] = ns["arr"] + 1
    ns["extra"] = [1]
    store.save("second", ns, {"messages": ["a", "b"]})
    return session_dir


def test_list_show_diff(session, capsys):
    assert main(["--session-dir", str(session), "list"]) == 0
    out = capsys.readouterr().out
    assert "first" in out and "second" in out and "+1 ~1 state" in out and "gen" in out
    assert main(["--session-dir", str(session), "show", "second"]) == 0
    out = capsys.readouterr().out
    assert "added: extra" in out and "changed: arr" in out and "not saved: gen (generator)" in out
    assert main(["--session-dir", str(session), "diff", "first", "second"]) == 0
    assert "state keys changed: messages" in capsys.readouterr().out


def test_verify_rm_gc_and_errors(session, capsys):
    assert main(["--store", str(session / "checkpoints"), "verify"]) == 0
    assert "ok      first" in capsys.readouterr().out
    db = sqlite3.connect(session / "checkpoints" / "checkpoints.sqlite", isolation_level=None)
    db.execute("UPDATE blobs SET payload = payload || x'00'")  # every small blob edited
    db.close()
    assert main(["--session-dir", str(session), "verify"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert main(["--session-dir", str(session), "rm", "first", "second"]) == 0
    assert main(["--session-dir", str(session), "gc"]) == 0
    assert "removed" in capsys.readouterr().out
    assert main(["--session-dir", str(session), "show", "nope"]) == 2
    assert "No checkpoint named 'nope'" in capsys.readouterr().err
    assert main(["--session-dir", str(session / "missing"), "list"]) == 2
    assert "No checkpoint store" in capsys.readouterr().err


def test_runs_as_a_process(session, tmp_path):
    code = "import sys; from cave.checkpoint._cli import main; sys.exit(main(sys.argv[1:]))"
    env = {"CAVE_CONFIG_DIR": str(tmp_path / "cfg"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code, "--session-dir", str(session), "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "second" in out.stdout
