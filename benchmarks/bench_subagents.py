"""What attenuation costs: agent code run under a sub-agent's (and a grandchild's) authority
against the same code under the session's, in one process, one thread, rounds alternating.

Workloads: a pure-Python loop (no audit events to decide) and 10,000 ``open().read()`` of files
in the workspace (each one decided: the child meets its own policy with its parent's). Target:
child / session <= 1.05 for the pure-Python loop; the per-open cost is reported. Also reported:
the size of the skills listing in the system prompt with 200 skills installed.

Run: .venv/bin/python benchmarks/bench_subagents.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_guard import file_heavy, make_workspace, pure_python  # noqa: E402

WORKLOADS = {"pure-Python loop": pure_python, "10,000 opens in the workspace": file_heavy}


def listing_size() -> tuple[int, int]:
    from cave.skills import SkillRegistry

    root = Path(tempfile.mkdtemp(prefix="cave-bench-skills-"))
    for i in range(200):
        d = root / f"skill-{i:03d}"
        d.mkdir()
        (d / "SKILL.md").write_text(
            f"---\nname: skill-{i:03d}\ndescription: {'Does a thing. ' * 40}\n---\nbody\n"
        )
    registry = SkillRegistry(root, roots=[(root, "workspace")])
    listing = registry.listing()
    return len(listing), listing.count("\n- ") - 1  # the last line counts the rest


def decision_us(ws: Path, rounds: int) -> dict[str, float]:
    """Median cost of one fast-path decision (``allowed_by_policy``) by each authority."""
    from cave.approvals._console import AutoDenyChannel
    from cave.security import Policy
    from cave.security._attenuation import ChildAuthority, given_policy
    from cave.security._capabilities import Capability
    from cave.security._engine import SessionAuthority

    class Null:
        def record(self, kind: str, /, **fields: object) -> None:
            pass

    top = SessionAuthority(
        workspace=ws, policy=Policy.default(ws), channel=AutoDenyChannel(), audit=Null()
    )
    child = ChildAuthority(
        parent=top, label="c", policy=given_policy(["fs.read:**", "fs.write:**"], ws)
    )
    grand = ChildAuthority(parent=child, label="g", policy=given_policy(["fs.read:**"], ws))
    caps = [Capability("fs.read", str(ws / f"f{i}.txt")) for i in range(100)]
    out = {}
    for key, auth in (("session", top), ("child", child), ("grandchild", grand)):
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(100):
                for cap in caps:
                    assert auth.allowed_by_policy(cap)
            samples.append((time.perf_counter() - t0) / 10_000 * 1e6)
        out[key] = statistics.median(samples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    from _table import write_table

    from cave.approvals._console import AutoDenyChannel
    from cave.security import AuditLog, Policy, Security

    ws = make_workspace()
    log = AuditLog(ws / ".cave" / "audit.jsonl")
    session = Security(
        workspace=ws, policy=Policy.default(ws), channel=AutoDenyChannel(), audit=log
    )
    child = session.spawn("child", ["fs.read:**", "fs.write:**"])
    grandchild = child.spawn("grandchild", ["fs.read:**"])
    who = {"session": session, "child": child, "grandchild": grandchild}
    times: dict[str, dict[str, list[float]]] = {w: {k: [] for k in who} for w in WORKLOADS}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for name, fn in WORKLOADS.items():
                for sec in who.values():
                    with sec.agent_code():
                        fn(ws)  # warm up
                for r in range(args.rounds):
                    order = list(who) if r % 2 == 0 else list(reversed(who))
                    for key in order:
                        with who[key].agent_code():
                            t0 = time.perf_counter()
                            fn(ws)
                            times[name][key].append(time.perf_counter() - t0)
        except BaseException as exc:  # noqa: B036
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    rows = []
    for name in WORKLOADS:
        med = {k: statistics.median(v) for k, v in times[name].items()}
        rows.append([
            name,
            round(med["session"] * 1000, 2),
            round(med["child"] * 1000, 2),
            round(med["grandchild"] * 1000, 2),
            round(med["child"] / med["session"], 3),
            round(med["grandchild"] / med["session"], 3),
        ])
    d = decision_us(ws, args.rounds)
    rows.append([
        "one decision (allowed_by_policy), us",
        round(d["session"], 2), round(d["child"], 2), round(d["grandchild"], 2),
        round(d["child"] / d["session"], 3), round(d["grandchild"] / d["session"], 3),
    ])
    opens = {k: statistics.median(v) for k, v in times["10,000 opens in the workspace"].items()}
    per_open = (opens["child"] - opens["session"]) / 10_000 * 1e6
    chars, shown = listing_size()
    notes = (
        f"Median of {args.rounds} rounds, the three authorities alternating in one worker "
        f"thread. A child adds {per_open:.1f} us per open() (its policy, then its parent's). "
        f"Skills listing with 200 skills installed: {chars:,} characters (~{chars // 4:,} "
        f"tokens), {shown} skills named, the rest counted. Load average at the end: "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs shared with other work."
    )
    write_table(
        "subagents",
        ["workload", "session ms", "child ms", "grandchild ms", "child / session",
         "grandchild / session"],
        rows,
        notes,
    )
    for sec in (grandchild, child, session):
        sec.close()
    log.close()


if __name__ == "__main__":
    main()
