"""Executor overhead: ``x = 1`` through ``Executor.run`` vs plain ``exec`` of the compiled code.

The overhead is what every agent step pays on top of its code: parse and compile with a
registered filename, swapping stdout/stderr for the capture tee, pointing fds 1 and 2 at the
capture's pipes (a row turns that off to show its share), the run lock, the result. Rows
with a timeout add the watchdog thread; ``AgentRuntime.run`` adds re-binding the primitives. A
second table compares 10 MB of printing through the capture with ``exec`` into a ``StringIO``.
All in one process, interleaved, so noise hits every row alike.

Run: .venv/bin/python benchmarks/bench_executor.py [--repeat N]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _table import write_table  # noqa: E402

from cave.runtime import _executor  # noqa: E402
from cave.runtime._executor import Executor  # noqa: E402
from cave.runtime._namespace import AgentRuntime  # noqa: E402

TRIVIAL = "x = 1"
PRINTING = "line = 'x' * 999\nfor i in range(10_000):\n    print(line)"


def timed(cases: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm up
    for _ in range(repeat):
        for name, fn in cases.items():
            t0 = time.perf_counter_ns()
            fn()
            out[name].append((time.perf_counter_ns() - t0) / 1000)
    return out


def plain_exec(code: str) -> Callable[[], object]:
    compiled = compile(code, "<bench>", "exec")
    ns: dict[str, object] = {"__name__": "__bench__"}
    return lambda: exec(compiled, ns)


def compile_and_exec(code: str) -> Callable[[], object]:
    ns: dict[str, object] = {"__name__": "__bench__"}
    return lambda: exec(compile(code, "<bench>", "exec"), ns)


def exec_to_stringio(code: str) -> Callable[[], object]:
    run = plain_exec(code)

    def go() -> None:
        saved, sys.stdout = sys.stdout, io.StringIO()
        try:
            run()
        finally:
            sys.stdout = saved

    return go


def without_fd_capture(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with fds 1 and 2 left alone (output below Python not captured for the model)."""
    real = _executor._start_fd_capture

    def go() -> object:
        _executor._start_fd_capture = lambda *_a, **_k: None
        try:
            return fn()
        finally:
            _executor._start_fd_capture = real

    return go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3000)
    args = parser.parse_args()

    executor = Executor({"__name__": "__bench__"})
    runtime = AgentRuntime()
    for i in range(5):
        runtime.add_primitive(f"prim{i}", object())
    trivial = timed(
        {
            "exec(compiled) (baseline)": plain_exec(TRIVIAL),
            "compile + exec": compile_and_exec(TRIVIAL),
            "Executor.run(echo=False)": lambda: executor.run(TRIVIAL, echo=False),
            "Executor.run(echo=False), fd capture off": without_fd_capture(
                lambda: executor.run(TRIVIAL, echo=False)
            ),
            "Executor.run(echo=False, timeout=60)": lambda: executor.run(
                TRIVIAL, echo=False, timeout=60
            ),
            "AgentRuntime.run(echo=False), 5 primitives": lambda: runtime.run(TRIVIAL, echo=False),
        },
        args.repeat,
    )
    base = statistics.median(trivial["exec(compiled) (baseline)"])
    rows = []
    for name, samples in trivial.items():
        med = statistics.median(samples)
        rows.append([name, med, med - base, med / base])
    write_table(
        "executor",
        ["`x = 1` via", "median µs", "minus baseline µs", "ratio to baseline"],
        rows,
        notes=f"{args.repeat} runs per row, interleaved, same process.",
    )

    printing = timed(
        {
            "exec into StringIO (baseline)": exec_to_stringio(PRINTING),
            "Executor.run(echo=False)": lambda: executor.run(PRINTING, echo=False),
        },
        max(5, args.repeat // 300),
    )
    base = statistics.median(printing["exec into StringIO (baseline)"])
    rows = [
        [name, statistics.median(s) / 1000, statistics.median(s) / base]
        for name, s in printing.items()
    ]
    table = write_table(
        "executor-print",
        ["10 MB as 10,000 prints of 1,000 chars, via", "median ms", "ratio to baseline"],
        rows,
        notes="The executor keeps only 16,000 chars (head + tail) for the model.",
    )
    # One results file per topic: append the print table to executor.md and drop its own file.
    results = Path(__file__).resolve().parent / "results"
    with open(results / "executor.md", "a") as f:
        f.write("\n" + table.split("\n", 2)[2])
    (results / "executor-print.md").unlink()


if __name__ == "__main__":
    main()
