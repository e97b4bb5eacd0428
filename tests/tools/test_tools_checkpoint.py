"""Tools survive a checkpoint: restored into a fresh session with the same source and
capabilities, the source covered by the checkpoint's signature."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tools_helpers import ECHO

import cave
from cave._errors import CheckpointTampered
from cave._session import Session
from cave.approvals._kernel_glue import make_channel
from cave.checkpoint._session_io import restore, save

READER = (
    "export async function run(a: { p: string }, cave: any) { return await cave.fs.read(a.p); }"
)


def _session(root: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Session:
    workspace = root / name
    (workspace / "data").mkdir(parents=True)
    (workspace / "data" / "f.txt").write_text(f"file in {name}")
    (workspace / "other.txt").write_text("not in data/")
    monkeypatch.setenv("CAVE_SESSION_DIR", str(root / name / "session"))
    session = Session(workspace=workspace, channel_factory=make_channel)
    session.checkpoint_store = str(root / "store")
    session.ensure_security()
    return session


def test_tools_come_back_in_a_fresh_session_and_keep_their_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAVE_CONFIG_DIR", str(tmp_path / "config"))
    a = _session(tmp_path, "a", monkeypatch)
    a.tools.register("echo", ECHO, [], "adds one")
    a.tools.register("reader", READER, ["fs.read:data/**"])
    save(a, "with-tools", progress=False)
    a.tools.register("later", ECHO)  # after the checkpoint: gone after a restore
    b = _session(tmp_path, "b", monkeypatch)
    b.tools.register("only_in_b", ECHO)
    try:
        restore(b, "with-tools", progress=False)
        assert set(b.tools.specs) == {"echo", "reader"}
        assert b.tools.specs["reader"].capabilities == ("fs.read:data/**",)
        assert b.tools.specs["echo"].digest == a.tools.specs["echo"].digest
        assert b.tools.call("echo", x=2) == {"y": 3}
        assert b.tools.call("reader", p="data/f.txt") == "file in b"  # b's workspace
        with pytest.raises(cave.ToolError, match="outside the capabilities"):
            b.tools.call("reader", p="other.txt")
        assert "tools.reader(p: string)" in b.runtime.manifest()
        restore(a, "with-tools", progress=False)  # in the same session: 'later' is dropped
        assert set(a.tools.specs) == {"echo", "reader"}
        assert a.tools.call("echo", x=0) == {"y": 1}
    finally:
        for s in (a, b):
            s.tools.close()
            s.security.close()


def test_an_edited_tool_source_in_the_checkpoint_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAVE_CONFIG_DIR", str(tmp_path / "config"))
    a = _session(tmp_path, "a", monkeypatch)
    try:
        a.tools.register("marker", ECHO.replace("Add one", "UNIQUE-MARKER"))
        save(a, "cp", progress=False)
        with sqlite3.connect(tmp_path / "store" / "checkpoints.sqlite") as db:  # small blobs
            rows = db.execute("SELECT digest, payload FROM blobs").fetchall()
            [(digest, payload)] = [r for r in rows if b"UNIQUE-MARKER" in bytes(r[1])]
            edited = bytes(payload).replace(b"UNIQUE-MARKER", b"EVIL---MARKER")
            db.execute("UPDATE blobs SET payload = ? WHERE digest = ?", (edited, digest))
        with pytest.raises(CheckpointTampered):
            restore(a, "cp", progress=False)
        assert a.tools.specs["marker"].source.count("UNIQUE-MARKER") == 1
    finally:
        a.tools.close()
        a.security.close()
