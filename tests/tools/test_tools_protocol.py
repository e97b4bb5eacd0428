"""Frames from the Deno process that are not frames: each fails the call and the process is
replaced; the next call works. Driven by a real Deno process running ``bad_runner.ts``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tools_helpers import make_session

import cave
from cave.tools._registry import Tools

RUNNER = str(Path(__file__).with_name("bad_runner.ts"))


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    session = make_session(tmp_path_factory.mktemp("tools-protocol-ws"))
    t = Tools(
        workspace=session.workspace,
        directory=session.directory / "bad-tools",
        primitives=lambda: session.security.primitives,
        record=session.audit.record,
        runner=RUNNER,
    )
    t.register("any", "export async function run(args: { mode: string }) { return 0; }")
    yield t
    t.close()
    session.security.close()


@pytest.mark.parametrize(
    ("mode", "kind", "message"),
    [
        ("garbage", "protocol", "not JSON"),
        ("no-token", "protocol", "without this process's token"),
        ("wrong-token", "protocol", "without this process's token"),
        ("array", "protocol", "not a frame object"),
        ("exit", "crash", "exited with status 3"),
    ],
)
def test_a_malformed_frame_fails_the_call_and_the_next_call_gets_a_new_process(
    tools: Tools, mode: str, kind: str, message: str
) -> None:
    tools.call("any", mode="fine")
    starts = tools.starts
    with pytest.raises(cave.ToolError) as info:
        tools.call("any", mode=mode)
    assert info.value.kind == kind and message in str(info.value)
    assert tools.starts == starts
    assert tools.call("any", mode="fine") == 1
    assert tools.starts == starts + 1
