"""Policy decision cost with 100 rules: median per check, against a naive matcher in the same run.

100 rules: the default rules (about 40, including the Python installation directories), then
project rules up to 100 (fs globs under many directories, shell programs, net hosts, env names).
Checked: 2,000 distinct fs paths (each decided once: the cache does not help), then the same
paths again (cache hits), plus shell, net and env requests. Baseline: a linear scan with
``fnmatch`` over the same rules (no index, no cache, no specificity), which is the obvious
implementation. Target: <= 20 us median per check.

Run: .venv/bin/python benchmarks/bench_policy.py
"""

from __future__ import annotations

import fnmatch
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _table import write_table  # noqa: E402

from cave.security import Capability, Effect, Policy, Rule  # noqa: E402


def build_policy(ws: Path) -> Policy:
    policy = Policy.default(ws)
    extra: list[Rule] = []
    i = 0
    while len(policy.rules) + len(extra) < 100:
        k = i % 5
        if k == 0:
            extra.append(Rule(f"fs.read:/data/project{i}/**", Effect.ALLOW))
        elif k == 1:
            extra.append(Rule(f"fs.write:out/run{i}/**/*.parquet", Effect.ALLOW))
        elif k == 2:
            extra.append(Rule(f"shell:tool{i}", Effect.ALLOW))
        elif k == 3:
            extra.append(Rule(f"net:api{i}.example.com:443", Effect.ALLOW))
        else:
            extra.append(Rule(f"env:APP_{i}_*", Effect.ALLOW))
        i += 1
    return policy.with_rules(*extra)


def naive(rules: list[tuple[str, str, Effect]], cap: Capability) -> Effect:
    best = Effect.ASK
    for kind, pattern, effect in rules:
        if kind == cap.kind and fnmatch.fnmatchcase(cap.resource, pattern):
            if effect is Effect.DENY:
                return effect
            best = effect
    return best


def main() -> None:
    ws = Path(os.path.realpath(tempfile.mkdtemp(prefix="cave-bench-policy-")))
    policy = build_policy(ws)
    assert len(policy.rules) == 100, len(policy.rules)
    flat = []
    for rule in policy.rules:
        kind, _, pattern = rule.capability.partition(":")
        if kind.startswith("fs") and not pattern.startswith("/"):
            pattern = f"{ws}/{pattern}"
        flat.append((kind, pattern, rule.effect))

    caps: list[Capability] = []
    for j in range(2000):
        caps.append(Capability("fs.read", f"{ws}/dir{j % 37}/sub{j % 11}/file{j}.csv"))
    for j in range(500):
        caps.append(Capability("fs.write", f"/data/project{j % 90}/x/y{j}.txt"))
    for j in range(200):
        caps.append(Capability("shell", f"/usr/bin/tool{j}"))
        caps.append(Capability("net", f"api{j}.example.com:443"))
        caps.append(Capability("env", f"APP_{j}_TOKEN"))

    def per_check(fn: object, items: list[Capability]) -> list[float]:
        out = []
        clock = time.perf_counter_ns
        for cap in items:
            t0 = clock()
            fn(cap)  # type: ignore[operator]
            out.append((clock() - t0) / 1000)
        return out

    fresh = Policy.from_dict(policy.to_dict())  # a cold cache
    cold = per_check(fresh.decide, caps)
    warm = per_check(fresh.decide, caps)
    base = per_check(lambda c: naive(flat, c), caps)
    fs_only = caps[:2000]
    cold_fs = per_check(Policy.from_dict(policy.to_dict()).decide, fs_only)
    base_fs = per_check(lambda c: naive(flat, c), fs_only)

    worst = Policy(ws, tuple(Rule(f"fs.read:/**/*.ext{j}", Effect.ASK) for j in range(100)))
    worst_flat = [("fs.read", f"/*.ext{j}", Effect.ASK) for j in range(100)]
    cold_worst = per_check(worst.decide, fs_only)
    base_worst = per_check(lambda c: naive(worst_flat, c), fs_only)

    def row(name: str, xs: list[float], ref: list[float]) -> list[object]:
        med, ref_med = statistics.median(xs), statistics.median(ref)
        p99 = sorted(xs)[int(len(xs) * 0.99)]
        return [name, len(xs), round(med, 2), round(p99, 2), round(med / ref_med, 3)]

    rows = [
        row("cold (every request new), all kinds", cold, base),
        row("cold, fs paths only", cold_fs, base_fs),
        row("warm (decision cached), all kinds", warm, base),
        row("baseline: naive fnmatch scan, all kinds", base, base),
        row("worst case: 100 fs rules '/**/*.extN' (no index help), cold", cold_worst, base_worst),
    ]
    notes = (
        f"100 rules ({len(Policy.default(ws).rules)} default + project rules); "
        f"{len(caps):,} requests, timed one by one with perf_counter_ns (includes ~0.1 us "
        "of timer overhead). ratio = median / naive-scan median. Target: <= 20 us median."
    )
    write_table(
        "policy",
        ["decisions", "n", "median us", "p99 us", "ratio to naive"],
        rows,
        notes,
    )


if __name__ == "__main__":
    main()
