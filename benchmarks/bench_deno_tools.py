"""Deno tools: warm call round trip, one syscall's round trip, cold start to the first answer.

Each row is measured against a baseline in the same run:

* warm call (no syscalls): ``tools.call`` of a tool returning a constant, against a bare JSON-line
  round trip to a Deno process that answers at once (same pipes and JSON, no worker, no checks).
  Target: <= 1 ms median.
* syscall round trip: a call making 100 ``cave.fs.read`` of a small allowed file, minus the warm
  call, per syscall; baseline: the same read through the primitive from Python (policy + vault
  + open/read, no Deno). Target: <= 1 ms median.
* cold start: ``close()`` then the first call (start Deno, load the tool into a new worker, run
  it), against starting a bare Deno process that answers one line. Target: <= 150 ms.

Run: .venv/bin/python benchmarks/bench_deno_tools.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _table import write_table  # noqa: E402

from cave._session import Session  # noqa: E402
from cave.approvals._kernel_glue import make_channel  # noqa: E402
from cave.tools._flags import deno_command, deno_env  # noqa: E402
from cave.tools._process import deno_binary  # noqa: E402

ECHO_TS = """
const enc = new TextEncoder();
const dec = new TextDecoder();
let buf = "";
for await (const chunk of Deno.stdin.readable) {
  buf += dec.decode(chunk, { stream: true });
  let nl;
  while ((nl = buf.indexOf("\\n")) >= 0) {
    const line = buf.slice(0, nl);
    buf = buf.slice(nl + 1);
    const m = JSON.parse(line);
    const out = JSON.stringify({ type: "result", id: m.id, value: 1 }) + "\\n";
    Deno.stdout.writeSync(enc.encode(out));
  }
}
"""
N_WARM = 300
N_SYS = 20
N_COLD = 7


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Echo:
    """The baseline process: same flags, same environment, answers each line at once."""

    def __init__(self, script: Path, deno_dir: Path) -> None:
        self.proc = subprocess.Popen(
            deno_command(deno_binary(), str(script), heap_mb=512),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=deno_env(str(deno_dir)),
            close_fds=True, start_new_session=True,
        )

    def ask(self, i: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"type": "call", "id": i, "args": {}}) + "\n").encode())
        self.proc.stdin.flush()
        json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cave-bench-tools-"))
    ws = root / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "small.txt").write_text("a small file\n" * 8)
    script = root / "echo.ts"
    script.write_text(ECHO_TS)
    session = Session(workspace=ws, channel_factory=make_channel)
    session.ensure_security()
    tools = session.tools
    tools.register("const", "export async function run() { return 1; }")
    reads = """
    export async function run(args: { n: number }, cave: any) {
      for (let i = 0; i < args.n; i++) await cave.fs.read("data/small.txt");
      return args.n;
    }"""
    tools.register("reads", reads, ["fs.read:data/**"])

    # warm call vs bare round trip
    for _ in range(20):
        tools.call("const")
    warm = []
    for _ in range(N_WARM):
        t = time.perf_counter()
        tools.call("const")
        warm.append(time.perf_counter() - t)
    echo = Echo(script, root / "deno")
    for i in range(20):
        echo.ask(i)
    bare = []
    for i in range(N_WARM):
        t = time.perf_counter()
        echo.ask(i)
        bare.append(time.perf_counter() - t)
    echo.close()

    # syscall: (call with 100 reads - call with 0 reads) / 100, vs the primitive from Python
    tools.call("reads", n=100)
    per_sys = []
    for _ in range(N_SYS):
        t = time.perf_counter()
        tools.call("reads", n=100)
        with_reads = time.perf_counter() - t
        t = time.perf_counter()
        tools.call("reads", n=0)
        without = time.perf_counter() - t
        per_sys.append((with_reads - without) / 100)
    fs = session.security.primitives["fs"]
    direct = []
    for _ in range(N_SYS):
        t = time.perf_counter()
        for _ in range(100):
            fs.read("data/small.txt")
        direct.append((time.perf_counter() - t) / 100)

    # cold start to the first answered call vs a bare Deno start answering one line
    cold = []
    for _ in range(N_COLD):
        tools.close()
        t = time.perf_counter()
        tools.call("const")
        cold.append(time.perf_counter() - t)
    bare_cold = []
    for _ in range(N_COLD):
        t = time.perf_counter()
        e = Echo(script, root / "deno")
        e.ask(0)
        bare_cold.append(time.perf_counter() - t)
        e.close()
    tools.close()
    version = tools.deno_version
    session.security.close()

    def row(name: str, xs: list[float], ref: list[float], target: str) -> list[object]:
        med, ref_med = statistics.median(xs), statistics.median(ref)
        return [name, len(xs), _ms(med), _ms(max(xs)), _ms(ref_med), round(med / ref_med, 2),
                target]

    rows = [
        row("warm call, no syscalls (vs bare JSON-line round trip to Deno)", warm, bare,
            "<= 1 ms"),
        row("syscall round trip: allowed cave.fs.read of a small file (vs the Python "
            "primitive)", per_sys, direct, "<= 1 ms"),
        row("cold start to the first answered call (vs bare Deno start + one line)", cold,
            bare_cold, "<= 150 ms"),
    ]
    notes = (
        f"Deno {version}. Calls from a user thread (guard off for the caller; the syscalls "
        "still go through the vault, policy and audit log). Syscall row: (a call making 100 "
        "reads - a call making none) / 100, median of 20. Shared 2-core machine, so max is noisy."
    )
    write_table(
        "deno_tools",
        ["what", "n", "median ms", "max ms", "baseline median ms", "ratio", "target"],
        rows,
        notes,
    )


if __name__ == "__main__":
    main()
