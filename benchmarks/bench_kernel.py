"""Cave kernel vs stock ipykernel, same run: cell round trip, start-up, interrupt latency.

Targets (issue 2): round-trip ratio <= 1.05, start-to-first-reply ratio <= 1.25, and an agent turn
stopped within a second of the stop button. Kernels alternate so drift on a noisy machine hits both.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _table import write_table  # noqa: E402

from cave.testing._anthropic_server import AnthropicServer  # noqa: E402
from cave.testing._kernel_harness import KernelHarness  # noqa: E402
from cave.testing._script import reply  # noqa: E402

ROUND_TRIPS = 300
STARTS = 8
INTERRUPTS = 5


class _Stock(KernelHarness):
    """The same harness on ipykernel's own kernel (``python -m ipykernel_launcher``)."""

    def start(self) -> KernelHarness:
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        return self


def round_trip(harness: KernelHarness, n: int) -> list[float]:
    harness.execute("x = 0")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        harness.execute("x += 1")
        times.append(time.perf_counter() - t0)
    return times


def start_time(kind: type[KernelHarness]) -> float:
    t0 = time.perf_counter()
    harness = kind().start()
    harness.execute("1")
    elapsed = time.perf_counter() - t0
    harness.stop()
    return elapsed


def interrupt_latency() -> list[float]:
    latencies = []
    spin = "n = 0\nwhile True:\n    n += 1"
    with (
        AnthropicServer([reply("", spin) for _ in range(INTERRUPTS)]) as server,
        KernelHarness(
            env={"ANTHROPIC_BASE_URL": server.base_url, "ANTHROPIC_API_KEY": "bench"}
        ) as kernel,
    ):
        for _ in range(INTERRUPTS):
            sent: list[float] = []

            def on_message(msg: dict, k: KernelHarness, sent: list[float] = sent) -> None:
                if not sent and "while True" in msg["content"].get("data", {}).get(
                    "text/plain", ""
                ):
                    time.sleep(0.2)
                    sent.append(time.perf_counter())
                    k.interrupt()

            kernel.execute("%agent spin", on_message=on_message, timeout=60)
            latencies.append(time.perf_counter() - sent[0])
    return latencies


def _has_key() -> bool:
    from cave.models._credentials import PROVIDER_ENV_VARS

    return any(os.environ.get(name) for name in PROVIDER_ENV_VARS)


def main() -> None:
    cave, stock = KernelHarness().start(), _Stock().start()
    try:
        cave_rt, stock_rt = [], []
        for _ in range(3):  # interleave blocks
            stock_rt += round_trip(stock, ROUND_TRIPS // 3)
            cave_rt += round_trip(cave, ROUND_TRIPS // 3)
    finally:
        cave.stop()
        stock.stop()
    cave_start, stock_start = [], []
    for _ in range(STARTS):
        stock_start.append(start_time(_Stock))
        cave_start.append(start_time(KernelHarness))
    stops = interrupt_latency()

    med = statistics.median
    rows = [
        (
            "cell round trip (median ms)",
            med(stock_rt) * 1e3,
            med(cave_rt) * 1e3,
            med(cave_rt) / med(stock_rt),
            "<= 1.05",
        ),
        (
            "start to first reply (median s)",
            med(stock_start),
            med(cave_start),
            med(cave_start) / med(stock_start),
            "<= 1.25",
        ),
        ("stop button to turn stopped (median s, max)", None, med(stops), max(stops), "< 1 s"),
    ]
    write_table(
        "kernel",
        ["measure", "stock ipykernel", "Cave", "ratio (or max)", "target"],
        rows,
        notes=f"{ROUND_TRIPS} round trips, {STARTS} starts, {INTERRUPTS} interrupts; "
        "kernels interleaved in one run. A provider key in the environment (Cave then starts "
        f"its credential process): {'yes' if _has_key() else 'no'}. Load average at the end: "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}.",
    )


if __name__ == "__main__":
    main()
