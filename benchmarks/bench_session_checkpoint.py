"""Session checkpoints: what auto-checkpointing adds to a turn, and how long a resume takes.

1. Auto-checkpoint cost per turn, small namespace. The same scripted turn (two model calls, one
   code step) in a secure `Session` with auto-checkpoint off and on (local store, keep 20: after
   20 turns every turn also prunes and collects). The namespace holds 10 injected objects (small
   lists and a 1,000-row DataFrame) plus what the agent made; the conversation grows each turn.
   Baseline in the same run: the turn without auto-checkpoint.
   The same with a 1 GiB DataFrame injected and never changed, with the kernel's write tracking
   on and off (``CAVE_CHECKPOINT_WRITE_TRACKING=0``): off, every auto-checkpoint reads the frame;
   and on without the background re-hash that follows each save
   (``CAVE_CHECKPOINT_VERIFY_EVERY=0``).
2. Resume of a 1 GiB DataFrame plus 100 small objects in a new kernel (``CAVE_RESUME``): time from
   starting the kernel to the reply of its first cell, against a plain kernel start in the same
   run; and `restore()` alone in this process. The page cache is dropped before every start and
   every restore when permitted (root), else the table says "warm".

Run: .venv/bin/python benchmarks/bench_session_checkpoint.py [--turns 40] [--gib 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _disk import drop_caches  # noqa: E402
from _namespaces import big_frame_namespace  # noqa: E402
from _table import write_table  # noqa: E402


def turn_times(root: Path, turns: int, auto: bool, big: Any = None) -> list[float]:
    import pandas as pd

    from cave._session import Session
    from cave.approvals._kernel_glue import make_channel
    from cave.checkpoint._autocheckpoint import enable_autocheckpoint
    from cave.testing import ScriptedModel, reply

    script = []
    for i in range(turns):
        script += [reply("", f"value_{i % 5} = [{i}] * 100\nprint(len(value_{i % 5}))"),
                   reply(f"done {i}")]
    os.environ["CAVE_SESSION_DIR"] = str(root / "session")
    session = Session(
        workspace=root, model=ScriptedModel(script), channel_factory=lambda s: make_channel(s)
    )
    session.checkpoint_store = str(root / "store")
    for i in range(9):
        session.runtime.inject(f"obj{i}", list(range(100)), f"object {i}")
    session.runtime.inject("frame", pd.DataFrame({"a": range(1000), "b": 1.5}), "a frame")
    if big is not None:
        session.runtime.inject("big", big, "a large frame the turns never change")
    if auto:
        enable_autocheckpoint(session, keep=20)
    times = []
    try:
        for i in range(turns):
            t0 = time.perf_counter()
            session.ask(f"turn {i}", echo=False)
            times.append(time.perf_counter() - t0)
    finally:
        session.security.close()
    return times


def tracking(on: bool) -> None:
    """Switch the kernel write tracking for the saves that follow (a fresh tracker either way)."""
    from cave.checkpoint import _fingerprint, _write_tracking

    os.environ["CAVE_CHECKPOINT_WRITE_TRACKING"] = "1" if on else "0"
    _write_tracking._tracker, _write_tracking._tried = None, False
    _fingerprint._known.clear()


def first_cell(env: dict[str, str], cwd: Path) -> tuple[float, str]:
    from cave.testing import KernelHarness

    t0 = time.perf_counter()
    k = KernelHarness(env=env, cwd=cwd, startup_timeout=300).start()
    try:
        cell = k.execute("import cave\nprint(len(cave.session().runtime.namespace))", timeout=300)
        took = time.perf_counter() - t0
        return took, cell.all_text
    finally:
        k.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    med = statistics.median
    root = Path(tempfile.mkdtemp(prefix="cave-bench-session-"))
    os.environ["CAVE_CONFIG_DIR"] = str(root / "config")
    rows: list[tuple[Any, ...]] = []
    try:
        # -- 1. auto-checkpoint per turn -------------------------------------------------
        (root / "warm").mkdir()
        turn_times(root / "warm", 3, True)  # imports, guard, first store
        off_dir, on_dir = root / "off", root / "on"
        off_dir.mkdir()
        on_dir.mkdir()
        off = turn_times(off_dir, args.turns, False)
        on = turn_times(on_dir, args.turns, True)
        added = [b - a for a, b in zip(off, on, strict=True)]
        rows += [
            ("turn, auto-checkpoint off (ms)", med(off) * 1e3, max(off) * 1e3, "baseline"),
            ("turn, auto-checkpoint on (ms)", med(on) * 1e3, max(on) * 1e3,
             f"{med(on) / med(off):.2f}x of off"),
            ("auto-checkpoint added per turn (ms)", med(added) * 1e3, max(added) * 1e3,
             "added to every turn (no target was set)"),
            ("of which turns after 20 (prune + gc) (ms)", med(added[20:]) * 1e3 if
             len(added) > 20 else None, max(added[20:]) * 1e3 if len(added) > 20 else None, ""),
        ]

        # -- 1b. the same with an unchanged 1 GiB frame, write tracking on and off ---------
        ns = big_frame_namespace(args.gib)
        big_turns = max(5, args.turns // 2)
        by_tracking: dict[Any, list[float]] = {}
        for on in (True, False, "unverified"):
            tracking(bool(on))
            # "unverified": tracking on, without the background re-hash after each save
            os.environ["CAVE_CHECKPOINT_VERIFY_EVERY"] = "0" if on == "unverified" else "1"
            where = root / f"big-{on}"
            where.mkdir()
            by_tracking[on] = turn_times(where, big_turns, True, ns["big"])[1:]  # 1st: full save
            shutil.rmtree(where)
        os.environ.pop("CAVE_CHECKPOINT_VERIFY_EVERY")
        tracking(True)
        base = med(off)
        rows += [
            (f"auto-checkpoint added per turn, unchanged {args.gib:g} GiB frame injected, "
             "write tracking on (ms)", (med(by_tracking[True]) - base) * 1e3,
             (max(by_tracking[True]) - base) * 1e3, f"turns 2-{big_turns}; the first saves it"),
            ("the same, write tracking off (ms)", (med(by_tracking[False]) - base) * 1e3,
             (max(by_tracking[False]) - base) * 1e3, "every save reads the frame"),
            ("the same, write tracking on without the re-hash after each save (ms)",
             (med(by_tracking["unverified"]) - base) * 1e3,
             (max(by_tracking["unverified"]) - base) * 1e3,
             "CAVE_CHECKPOINT_VERIFY_EVERY=0: the difference is what verification costs a turn"),
        ]

        # -- 2. resume 1 GiB in a new kernel ---------------------------------------------
        from cave.checkpoint import SessionStore

        store_dir = root / "bigstore"
        t0 = time.perf_counter()
        SessionStore(store_dir).save("big", ns, {"version": 1, "history": [], "injected": {}})
        save_s = time.perf_counter() - t0
        del ns
        work = root / "kernel"
        work.mkdir()
        base_env = {
            "CAVE_CONFIG_DIR": str(root / "config"),
            "CAVE_SESSION_DIR": str(root / "kernel-session"),
            "CAVE_CHECKPOINTS": str(store_dir),
            "CAVE_AUTOCHECKPOINT": "0",
        }
        plain, resumed, loads = [], [], []
        cold = True
        for _ in range(args.repeat):
            cold &= drop_caches()
            plain.append(first_cell(base_env, work)[0])
            cold &= drop_caches()
            took, text = first_cell({**base_env, "CAVE_RESUME": "big"}, work)
            assert "Restored checkpoint 'big'" in text, text
            resumed.append(took)
            cold &= drop_caches()
            t0 = time.perf_counter()
            SessionStore(store_dir).load("big")
            loads.append(time.perf_counter() - t0)
        cache = "cold" if cold else "warm"
        rows += [
            (f"kernel start + first cell, plain ({cache}) (s)", med(plain), max(plain), "baseline"),
            (f"kernel start + first cell, resuming {args.gib:g} GiB ({cache}) (s)",
             med(resumed), max(resumed), f"+{med(resumed) - med(plain):.2f} s over plain"),
            (f"SessionStore.load of the same checkpoint in-process ({cache}) (s)",
             med(loads), max(loads), ""),
            ("save of that checkpoint, once (s)", save_s, save_s, ""),
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_table(
        "session_checkpoint",
        ["measure", "median", "max", "note"],
        rows,
        notes=(
            f"{args.turns} turns per setting (ScriptedModel, secure Session, local store, "
            f"keep 20); resume: {args.repeat} runs of a {args.gib:g} GiB DataFrame + 100 small "
            "objects. 2 cores shared with other work: figures vary between runs."
        ),
    )


if __name__ == "__main__":
    main()
