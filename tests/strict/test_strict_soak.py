"""Spawn safety: many strict steps in a row while the kernel's other threads are busy.

One agent turn runs ``CAVE_STRICT_SOAK_STEPS`` steps (200 here; ``make strict-soak`` runs 1,000)
while a user thread holds a lock and streams output, and another thread updates a widget (comm
messages). Every 25th step kills its worker (``os._exit``), so workers are spawned again under the
same load. At the end: no deadlock (the turn finishes), the counter the steps kept is right, the
kernel has exactly one worker child, and no descriptor leaked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from strict_helpers import StrictKernel, needs_strict

from cave.testing import reply

pytestmark = [pytest.mark.slow, needs_strict]

STEPS = int(os.environ.get("CAVE_STRICT_SOAK_STEPS", "200"))
CRASH_EVERY = 25


@pytest.fixture(scope="module")
def k(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictKernel]:
    with StrictKernel(tmp_path_factory.mktemp("strict-soak")) as kernel:
        yield kernel


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(600 + STEPS)
def test_many_strict_steps_while_kernel_threads_are_busy(k: StrictKernel) -> None:
    kpid = int(k.value("__import__('os').getpid()"))
    busy = k.execute(
        "import threading, time, sys, ipywidgets\n"
        "lock = threading.Lock(); stop = threading.Event(); slider = ipywidgets.IntSlider()\n"
        "def hold():\n"
        "    while not stop.is_set():\n"
        "        with lock:\n"
        "            print('user thread tick', file=sys.__stdout__, flush=True)\n"
        "            time.sleep(0.001)\n"
        "def widget():\n"
        "    i = 0\n"
        "    while not stop.is_set():\n"
        "        i += 1; slider.value = i % 100; time.sleep(0.001)\n"
        "threads = [threading.Thread(target=hold, daemon=True),\n"
        "           threading.Thread(target=widget, daemon=True)]\n"
        "for t in threads: t.start()\n"
    )
    assert busy.status == "ok", busy.all_text
    k.script(reply("", "n = 0"), reply("ok"))
    warm = k.execute("%agent warm up", timeout=120)
    assert warm.status == "ok", warm.all_text
    fds_before = _fds(kpid)
    steps = []
    for i in range(1, STEPS + 1):
        code = "n += 1"
        if i % CRASH_EVERY == 0:
            code = "import os\nos._exit(3)"
        steps.append(reply("", code))
    k.script(*steps, reply("finished"))
    cell = k.execute(f"%agent --max-steps {STEPS + 1} count", timeout=STEPS * 2 + 300)
    assert cell.status == "ok", cell.all_text[-3000:]
    crashes = STEPS // CRASH_EVERY
    assert k.value("cave.retrieve('n')") == str(STEPS - crashes)
    stop = k.execute("stop.set()\nfor t in threads: t.join(5)\nprint(all(not t.is_alive() "
                     "for t in threads))")
    assert stop.stdout.strip() == "True", stop.all_text
    workers = [c for c in _children(kpid)
               if "cave.strict._worker" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) <= 1, workers  # the live worker (none if the last step crashed it)
    assert _fds(kpid) <= fds_before, (fds_before, _fds(kpid))
