"""`cave resume`: the command it builds (without starting JupyterLab), and its early refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cave.checkpoint import SessionStore
from cave.cli import build_parser, main, resume_command


def test_lab_command_pins_the_store_and_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv, env = resume_command(
        "before-cleanup",
        store="sessions/demo",
        extra=["--no-browser", "--port", "9999"],
        environ={"PATH": "/usr/bin", "CAVE_RESUME": "old"},
        python="/py",
    )
    assert argv == ["/py", "-m", "jupyterlab", "--no-browser", "--port", "9999"]
    assert env == {
        "PATH": "/usr/bin",
        "CAVE_RESUME": "before-cleanup",
        "CAVE_CHECKPOINTS": str(tmp_path / "sessions" / "demo"),  # absolute
    }


def test_console_command_and_remote_store_url() -> None:
    argv, env = resume_command(
        "handoff", store="s3://bucket/sessions/one", console=True, environ={}, python="/py"
    )
    assert argv == ["/py", "-m", "jupyter_console", "--kernel=cave"]
    assert env == {"CAVE_RESUME": "handoff", "CAVE_CHECKPOINTS": "s3://bucket/sessions/one"}
    _argv, env = resume_command("x", store="file:///data/store", environ={})
    assert env["CAVE_CHECKPOINTS"] == "/data/store"


def test_parser_passes_frontend_arguments_after_the_double_dash() -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(
        ["resume", "mid", "--store", "/s", "--", "--port", "9999", "--no-browser"]
    )
    assert (args.name, args.store, args.console) == ("mid", "/s", False)
    assert extra in (["--", "--port", "9999", "--no-browser"], ["--port", "9999", "--no-browser"])
    with pytest.raises(SystemExit):
        main(["audit", "--bogus"])  # other commands still refuse unknown arguments


def test_refuses_a_missing_store_or_checkpoint_before_starting_anything(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("CAVE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert main(["resume", "mid", "--store", str(tmp_path / "nowhere")]) == 2
    assert "No checkpoint store at" in capsys.readouterr().err
    SessionStore(tmp_path / "store").save("there", {"x": 1}, {})
    assert main(["resume", "mid", "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "No checkpoint named 'mid'" in err and "there" in err


def test_help_names_the_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cave.cli", "resume", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0 and "cave resume NAME" in out.stdout and "--console" in out.stdout
