"""What the environment guard costs, and what the credential process adds to a model request.

Environment: the same ``os.environ`` operations timed (1) before the guard is installed (stock
CPython), (2) after, in a thread that is not agent code (what user cells and the kernel pay), and
(3) in an agent thread inside ``Security.agent_code()`` (names the policy allows, and a secret
the session granted, so nothing asks). Ratios are against (1), measured in the same process
just before the install (the install cannot be undone, so the columns are not interleaved).

Credential process: a small POST to the loopback Anthropic server, direct vs through the
process (unix socket, key added there), rounds alternating.

Run: .venv/bin/python benchmarks/bench_environ.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SECRET = "CAVE_BENCH_SECRET"
N = 20_000


def _ops() -> dict[str, Callable[[], object]]:
    env = os.environ
    return {
        "os.environ['PATH']": lambda: env["PATH"],
        "os.environ.get(unset)": lambda: env.get("CAVE_BENCH_UNSET"),
        "os.getenv('HOME')": lambda: os.getenv("HOME"),
        "'HOME' in os.environ": lambda: "HOME" in env,
        f"os.environ['{SECRET}'] (granted)": lambda: env[SECRET],
        "dict(os.environ)": lambda: dict(env),
    }


def _per_op_us(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def _measure(rounds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, fn in _ops().items():
        n = N // 20 if name.startswith("dict") else N
        fn()
        out[name] = statistics.median(_per_op_us(fn, n) for _ in range(rounds))
    return out


def _in_thread(fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    box: list[dict[str, float]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: B036
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return box[0]


def _proxy_rounds(rounds: int) -> tuple[float, float]:
    import httpx

    from cave.models._credential_proxy import CredentialProxy
    from cave.testing._anthropic_server import AnthropicServer

    proxy = CredentialProxy()
    body = {"model": "claude-sonnet-5-5", "messages": [{"role": "user", "content": "hi"}]}
    try:
        with AnthropicServer([], api_key="sk-bench") as server:
            route = proxy.add_key("anthropic", server.base_url, "sk-bench", header="x-api-key")
            direct = httpx.Client(base_url=server.base_url)
            via = httpx.Client(
                base_url=route.base_url, transport=httpx.HTTPTransport(uds=route.uds)
            )
            times: dict[str, list[float]] = {"direct": [], "proxy": []}
            for r in range(rounds * 10):
                for how in ("direct", "proxy") if r % 2 == 0 else ("proxy", "direct"):
                    client, key = (direct, "sk-bench") if how == "direct" else (via, route.token)
                    t0 = time.perf_counter()
                    resp = client.post(
                        "/v1/messages/count_tokens", headers={"x-api-key": key}, json=body
                    )
                    times[how].append(time.perf_counter() - t0)
                    assert resp.status_code == 200, resp.text
            direct.close()
            via.close()
    finally:
        proxy.close()
    return statistics.median(times["direct"]) * 1e3, statistics.median(times["proxy"]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from _table import write_table

    from cave.approvals._console import AutoDenyChannel
    from cave.security import AuditLog, Policy, Security

    os.environ[SECRET] = "s3cr3t"
    stock = _in_thread(lambda: _measure(args.rounds))
    ws = Path(os.path.realpath(tempfile.mkdtemp(prefix="cave-bench-environ-")))
    log = AuditLog(ws / ".cave" / "audit.jsonl")
    policy = Policy.default(ws).with_rules((f"env:{SECRET}", "allow"))
    security = Security(workspace=ws, policy=policy, channel=AutoDenyChannel(), audit=log)
    user = _in_thread(lambda: _measure(args.rounds))

    def agent() -> dict[str, float]:
        with security.agent_code():
            return _measure(args.rounds)

    agent_side = _in_thread(agent)
    rows = []
    for name in stock:
        rows.append(
            [
                name,
                round(stock[name], 3),
                round(user[name], 3),
                round(agent_side[name], 3),
                round(user[name] / stock[name], 2),
                round(agent_side[name] / stock[name], 2),
            ]
        )
    direct_ms, proxy_ms = _proxy_rounds(args.rounds)
    rows.append(
        [
            "API request (count_tokens), direct vs through the credential process",
            round(direct_ms * 1000, 1),
            round(proxy_ms * 1000, 1),
            None,
            round(proxy_ms / direct_ms, 2),
            None,
        ]
    )
    n_env = len(os.environ)
    notes = (
        f"Microseconds per operation, median of {args.rounds} rounds of {N:,} calls "
        f"(dict(): {N // 20:,}); {n_env} variables in the environment. 'stock' ran first, before "
        "the guard was installed, in the same kind of thread; 'user' is a thread that is not agent "
        "code after the install (what user cells and the kernel pay); 'agent' runs inside "
        "Security.agent_code() with the secret allowed by a policy rule, so nothing asks. Last "
        "row: one small request to the loopback Anthropic server, direct vs through Cave's "
        f"credential process (us, rounds alternating). Load average at the end: "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs shared with other work."
    )
    write_table(
        "environ",
        ["operation", "stock us", "user us", "agent us", "user / stock", "agent / stock"],
        rows,
        notes,
    )
    security.close()
    log.close()


if __name__ == "__main__":
    main()
