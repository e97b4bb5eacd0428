"""Tools in a real Deno process: values, syscalls, the ceiling, Deno's own refusals, limits."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from tools_helpers import ECHO, AgentRun, records, wait_for

import cave
from cave._session import Session
from cave.tools import ToolLimits

READER = """
export async function run(args: { path: string }, cave: any) {
  return await cave.fs.read(args.path);
}
"""


def test_register_and_call_returns_python_values(session: Session) -> None:
    spec = session.tools.register("echo", ECHO, [], "adds one")
    assert spec.signature.params == "(x: number, note?: string)"
    assert spec.signature.doc == "Add one to x."
    assert session.tools.call("echo", x=41) == {"y": 42}
    assert session.tools.call("echo", x=1.5) == {"y": 2.5}
    [reg] = [r for r in records(session, "tool.register") if r["tool"] == "echo"]
    assert reg["by"] == "user" and reg["sha256"] == spec.digest


def test_a_syscall_inside_the_capabilities_reaches_the_file(session: Session) -> None:
    session.tools.register("reader", READER, ["fs.read:data/**"])
    assert session.tools.call("reader", path="data/small.txt") == "hello from a file\n"
    last = records(session, "tool.syscall")[-1]
    assert last["tool"] == "reader" and last["ok"] is True
    assert last["capability"] == f"fs.read:{session.workspace}/data/small.txt"


def test_a_syscall_beyond_the_capabilities_is_refused_without_asking(session: Session) -> None:
    session.tools.register("reader2", READER, ["fs.read:data/**"])
    asked_before = len(session.approvals.queue.listing(1000))
    (session.workspace / "notes.txt").write_text("outside data/")
    with pytest.raises(cave.ToolError) as info:
        session.tools.call("reader2", path="notes.txt")
    assert info.value.js_name == "PermissionError"
    assert "outside the capabilities tool 'reader2' was registered with" in str(info.value)
    assert len(session.approvals.queue.listing(1000)) == asked_before  # nobody was asked
    last = records(session, "tool.syscall")[-1]
    assert last["tool"] == "reader2" and last["ok"] is False
    assert "outside the tool's capabilities" in last["error"]


def test_a_syscall_the_policy_denies_rejects_and_is_audited_with_the_tool(
    session: Session,
) -> None:
    session.tools.register("etc_reader", READER, ["fs.read:/etc/**"])
    source = """
    export async function run(args: {}, cave: any) {
      try { await cave.fs.read("/etc/hostname"); return "read"; }
      catch (e) { return `${e.name}: ${e.message}`; }
    }"""
    session.tools.register("catcher", source, ["fs.read:/etc/**"])
    answer = session.tools.call("catcher")
    assert answer.startswith(
        "PermissionError: fs.read: fs.read:/etc/hostname is denied by the policy"
    )
    last = records(session, "tool.syscall")[-1]
    assert last["tool"] == "catcher" and last["ok"] is False and "denied" in last["error"]
    denied = records(session, "denied")[-1]
    assert denied["capability"] == "fs.read:/etc/hostname"


DIRECT = """
export async function run(args: { what: string }, cave: any) {
  if (args.what === "read") return await Deno.readTextFile("/etc/hostname");
  if (args.what === "run") return new Deno.Command("/usr/bin/env").outputSync().code;
  if (args.what === "fetch") return (await fetch("http://127.0.0.1:80/")).status;
  if (args.what === "env") return Deno.env.get("HOME");
  if (args.what === "write") { await Deno.writeTextFile("x.txt", "x"); return "wrote"; }
}
"""


@pytest.mark.parametrize(
    ("what", "needs"),
    [("read", "read"), ("run", "run"), ("fetch", "net"), ("env", "env"), ("write", "write")],
)
def test_deno_apis_called_directly_meet_denos_permission_error(
    session: Session, what: str, needs: str
) -> None:
    if "direct" not in session.tools.specs:  # every capability: Deno still grants nothing
        session.tools.register("direct", DIRECT, ["fs:**", "shell:*", "net:*", "env:*"])
    with pytest.raises(cave.ToolError) as info:
        session.tools.call("direct", what=what)
    assert info.value.js_name == "NotCapable"
    assert f"Requires {needs} access" in str(info.value)


def test_a_symlink_inside_an_allowed_directory_is_judged_by_its_target(
    session: Session, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for tools")
    link = session.workspace / "data" / "link.txt"
    link.symlink_to(secret)
    session.tools.register("linker", READER, ["fs.read:data/**"])
    with pytest.raises(cave.ToolError) as info:
        session.tools.call("linker", path="data/link.txt")
    assert info.value.js_name == "PermissionError"
    assert f"fs.read:{secret.resolve()} is outside the capabilities" in str(info.value)
    direct = "export async function run(a: any) { return await Deno.readTextFile(a.path); }"
    session.tools.register("linker_direct", direct, ["fs.read:data/**"])
    with pytest.raises(cave.ToolError, match="NotCapable"):
        session.tools.call("linker_direct", path=str(link))


def test_the_typescript_error_and_stack_reach_python(session: Session) -> None:
    source = """
    function inner(n: number): number { throw new TypeError(`bad record ${n}`); }
    export async function run(args: { n: number }) { return inner(args.n); }
    """
    session.tools.register("thrower", source)
    with pytest.raises(cave.ToolError) as info:
        session.tools.call("thrower", n=7)
    err = info.value
    assert (err.tool, err.kind, err.js_name, err.js_message) == ("thrower", "error", "TypeError",
                                                                 "bad record 7")
    assert "at inner" in (err.stack or "") and "at inner" in str(err)


def test_an_infinite_loop_is_stopped_at_the_time_limit_and_the_next_call_works(
    session: Session,
) -> None:
    session.tools.register("spin", "export async function run() { while (true) {} }")
    session.tools.register("echo", ECHO)
    starts = session.tools.starts
    old = session.tools.limits
    session.tools.limits = old.with_timeout(0.5)
    try:
        with pytest.raises(cave.ToolError) as info:
            session.tools.call("spin")
    finally:
        session.tools.limits = old
    assert info.value.kind == "timeout" and "did not finish within 0.5 s" in str(info.value)
    assert session.tools.call("echo", x=1) == {"y": 2}
    assert session.tools.starts == starts  # the worker was terminated, not the process


def test_ten_megabytes_of_output_are_cut_with_a_note(
    session: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    source = """
    export async function run() {
      const line = "x".repeat(1023);
      for (let i = 0; i < 10 * 1024; i++) console.log(line);
      return "done";
    }"""
    session.tools.register("chatty", source)
    assert session.tools.call("chatty") == "done"
    out = capsys.readouterr().out
    limit = session.tools.limits.max_output_bytes
    assert len(out.encode()) < limit + 1000
    assert f"the tool's output was cut at {limit:,} bytes" in out
    assert session.tools.call("echo", x=0) == {"y": 1}


def test_the_syscall_limit_refuses_later_syscalls(session: Session) -> None:
    source = """
    export async function run(args: {}, cave: any) {
      let ok = 0;
      for (let i = 0; i < 20; i++) {
        try { await cave.fs.read("data/small.txt"); ok++; }
        catch (e) { return [ok, e.name, e.message]; }
      }
      return [ok];
    }"""
    session.tools.register("busy", source, ["fs.read:data/**"])
    old = session.tools.limits
    session.tools.limits = old.with_max_syscalls(5)
    try:
        ok, name, message = session.tools.call("busy")
    finally:
        session.tools.limits = old
    assert (ok, name) == (5, "RangeError") and "limit per call" in message


def test_a_result_over_the_limit_is_an_error(session: Session) -> None:
    session.tools.register("big", 'export async function run() { return "y".repeat(2_000_000); }')
    old = session.tools.limits
    session.tools.limits = ToolLimits(max_result_bytes=1_000_000)
    try:
        with pytest.raises(cave.ToolError, match="over the limit of 1000000"):
            session.tools.call("big")
    finally:
        session.tools.limits = old


def test_a_deno_process_killed_with_sigkill_is_restarted(session: Session) -> None:
    session.tools.register("echo", ECHO)
    assert session.tools.call("echo", x=1) == {"y": 2}
    proc = session.tools._proc
    assert proc is not None
    starts = session.tools.starts
    os.kill(proc.pid, signal.SIGKILL)
    proc.proc.wait(10)
    assert session.tools.call("echo", x=5) == {"y": 6}
    assert session.tools.starts == starts + 1
    assert records(session, "tool.process")[-1]["start"] == starts + 1


def test_a_kill_during_a_call_fails_that_call_and_the_next_one_works(session: Session) -> None:
    source = """
    export async function run(args: {}, cave: any) {
      await cave.env.get("CAVE_TOOL_TEST");   // the test kills the process during this syscall
      return "finished";
    }"""
    session.tools.register("victim", source, ["env:CAVE_TOOL_TEST"])
    os.environ["CAVE_TOOL_TEST"] = "1"
    import cave.tools._broker as broker

    original = broker.call_on_behalf

    def kill_then_answer(*args: object) -> object:
        proc = session.tools._proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.proc.wait(10)
        return original(*args)  # type: ignore[arg-type]

    broker.call_on_behalf = kill_then_answer  # type: ignore[assignment]
    try:
        with pytest.raises(cave.ToolError) as info:
            session.tools.call("victim")
    finally:
        broker.call_on_behalf = original
        del os.environ["CAVE_TOOL_TEST"]
    assert info.value.kind == "crash" and "killed by signal SIGKILL" in str(info.value)
    assert session.tools.call("echo", x=9) == {"y": 10}


def test_the_heap_limit_fails_the_call_and_the_next_one_works(session: Session) -> None:
    source = """
    export async function run() {
      const a: number[][] = [];
      while (true) a.push(new Array(1e5).fill(1.5));
    }
    """
    session.tools.register("hog", source)
    old = session.tools.limits
    # A long wall-time limit: the test must end by the heap running out, however slow the machine.
    session.tools.limits = old.with_heap_mb(64).with_timeout(600)
    session.tools.close()  # the heap limit applies from the next process
    try:
        with pytest.raises(cave.ToolError) as info:
            session.tools.call("hog")
    finally:
        session.tools.limits = old
        session.tools.close()
    assert info.value.kind == "crash" and "V8 heap" in str(info.value)
    assert session.tools.call("echo", x=3) == {"y": 4}


def test_tools_cannot_see_each_others_state(session: Session) -> None:
    counter = """
    let n = 0;
    export async function run() { (globalThis as any).shared = "mine"; return ++n; }"""
    peek = "export async function run() { return (globalThis as any).shared ?? null; }"
    session.tools.register("counter", counter)
    session.tools.register("peek", peek)
    assert [session.tools.call("counter") for _ in range(3)] == [1, 2, 3]
    assert session.tools.call("peek") is None


def test_the_stop_button_cancels_a_running_call_from_agent_code(session: Session) -> None:
    source = """
    export async function run(args: {}, cave: any) {
      await cave.env.get("CAVE_TOOL_TEST");  // the test waits for this syscall's audit record
      while (true) {}
    }"""
    session.tools.register("spin_after_syscall", source, ["env:CAVE_TOOL_TEST"])
    seen = len(records(session, "tool.syscall"))
    run = AgentRun(session, "tools.spin_after_syscall()\n")
    wait_for(lambda: len(records(session, "tool.syscall")) > seen, "the tool's syscall")
    session.runtime.interrupt()  # the stop button; it re-fires until the run has ended
    result = run.join()
    assert result.interrupted
    assert records(session, "tool.call")[-1]["outcome"] == "stopped"
    assert session.tools.call("echo", x=4) == {"y": 5}


def test_bad_input_gets_a_clear_error(session: Session) -> None:
    with pytest.raises(cave.ToolError, match="not a usable tool name"):
        session.tools.register("no-dashes", ECHO)
    with pytest.raises(cave.ToolError, match="a list of strings"):
        session.tools.register("x1", ECHO, "fs.read:data/**")
    with pytest.raises(cave.ToolError, match="unknown capability kind"):
        session.tools.register("x2", ECHO, ["disk:everything"])
    with pytest.raises(cave.ToolError, match="does not export a function named run"):
        session.tools.register("x3", "export const x = 1;")
    with pytest.raises(cave.ToolError, match="does not parse"):
        session.tools.register("x4", "export async function run( {")
    for source in (
        'import { x } from "./x.ts";\nexport async function run() { return x; }',
        'export * from "/etc/passwd";\nexport async function run() {}',
        'import "https://example.com/x.ts";\nexport async function run() {}',
        'type T = typeof import("/etc/passwd");\nexport async function run() {}',
        '/// <reference path="/etc/passwd" />\nexport async function run() {}',
    ):
        with pytest.raises(cave.ToolError, match="a tool is one file, with no imports"):
            session.tools.register("x5", source)
    with pytest.raises(cave.ToolError, match="must be JSON values"):
        session.tools.call("echo", x=float("nan"))
    with pytest.raises(cave.ToolError, match="no tool named 'nope'"):
        session.tools.call("nope")
    assert not {"x1", "x2", "x3", "x4", "x5"} & set(session.tools.specs)
