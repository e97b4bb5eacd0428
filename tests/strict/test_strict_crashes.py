"""Crash isolation, stop and timeouts in strict mode, through a real kernel.

A segfault, ``os._exit``, memory exhaustion or a hang ends only the worker: the kernel, the
namespace (as it was before the step) and the conversation survive, the model is told, and the
next step runs in a new worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from strict_helpers import StrictKernel, needs_strict

from cave.testing import KernelHarness, reply

pytestmark = [pytest.mark.slow, needs_strict]


@pytest.fixture(scope="module")
def k(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictKernel]:
    with StrictKernel(tmp_path_factory.mktemp("strict-crashes")) as kernel:
        setup = kernel.execute("import cave\ncave.inject('keep', {'a': 1})")
        assert setup.status == "ok", setup.all_text
        yield kernel


def _turn(k: StrictKernel, code: str, *, timeout: str = "", **kwargs: Any) -> str:
    k.script(reply("", code), reply("ok"))
    cell = k.execute(f"%agent {timeout} go", timeout=120, **kwargs)
    assert cell.status == "ok", cell.all_text
    return k.tool_results()


def _alive_and_intact(k: StrictKernel) -> None:
    assert k.value("cave.retrieve('keep')") == "{'a': 1}"
    after = _turn(k, "print('next step', keep)")
    assert "next step {'a': 1}" in after


@pytest.mark.parametrize("code, why", [
    ("import ctypes\nctypes.string_at(0)", "SIGSEGV"),
    ("import os\nos._exit(7)", "status 7"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "SIGKILL"),
])
def test_a_crashing_worker_ends_alone(k: StrictKernel, code: str, why: str) -> None:
    told = _turn(k, "before = 1\n" + code)
    assert "StrictWorkerCrashed" in told and why in told, told
    _alive_and_intact(k)


def test_memory_exhaustion_fails_the_step_not_the_kernel(k: StrictKernel) -> None:
    k.execute("import cave\ns = cave.session()\n"
              "s.strict_settings = s.strict_settings.with_step_memory(512 * 2**20)")
    assert "mode: guard" in k.execute("%cave mode guard").stdout
    assert "mode: strict" in k.execute("%cave mode strict", timeout=90).stdout
    told = _turn(k, "hog = bytearray(2 * 2**30)")
    assert "MemoryError" in told or "StrictWorkerCrashed" in told, told
    _alive_and_intact(k)
    assert k.value("'hog' in cave.session().runtime.namespace") == "False"


def test_timeout_interrupts_the_worker(k: StrictKernel) -> None:
    told = _turn(k, "while True:\n    pass", timeout="--timeout 1")
    assert "Timed out" in told and "StepTimeout" in told, told
    _alive_and_intact(k)


def test_a_worker_that_ignores_sigint_is_killed_after_the_grace_period(k: StrictKernel) -> None:
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    told = _turn(k, code, timeout="--timeout 1")
    assert "Timed out" in told and "SIGKILL" in told, told
    _alive_and_intact(k)


def test_stop_button_stops_a_running_step(k: StrictKernel) -> None:
    k.script(reply("", "import time\nprint('started', flush=True)\nwhile True:\n"
                       "    time.sleep(0.01)"), reply("never"))
    sent = []

    def stop_when_started(msg: dict[str, Any], kernel: KernelHarness) -> None:
        if msg["msg_type"] == "stream" and "started" in msg["content"]["text"] and not sent:
            sent.append(True)
            kernel.interrupt()

    cell = k.execute("%agent loop", timeout=120, on_message=stop_when_started)
    assert sent and cell.status in ("ok", "error")
    assert "interrupt" in cell.all_text.lower() or "stopped" in cell.all_text.lower()
    _alive_and_intact(k)


def test_unpicklable_results_are_reported_by_name(k: StrictKernel) -> None:
    told = _turn(k, "gen = (i for i in range(3))\nclass Mine:\n    pass\nm = Mine()\n"
                    "print(next(gen))")
    assert "`gen` (generator) stays in the worker only" in told, told
    # An instance of a class the agent defined pickles by value: the kernel holds its bytes.
    assert "`m`" not in told, told
    assert k.value("type(cave.retrieve('m')).__name__") == "WorkerValue"
    # ...and keeps working in the worker across steps.
    assert "1" in _turn(k, "print(next(gen))")
    assert "only in the strict-mode worker" in k.value("repr(cave.retrieve('gen'))")


def test_output_from_file_descriptors_and_values_reach_the_model(k: StrictKernel) -> None:
    told = _turn(k, "import os, sys\nos.write(1, b'fd-one\\n')\nprint('py-out')\n"
                    "print('py-err', file=sys.stderr)\n21 * 2")
    for text in ("fd-one", "py-out", "py-err", "Out: 42"):
        assert text in told, told


def test_stop_button_cancels_a_pending_broker_approval(k: StrictKernel) -> None:
    target = k.outside / "never.txt"
    k.script(reply("", f"open({str(target)!r}, 'w')\nprint('not reached')"), reply("never"))
    sent = []

    def stop_when_asked(msg: dict[str, Any], kernel: KernelHarness) -> None:
        text = msg["content"].get("data", {}).get("text/plain", "")
        if msg["msg_type"] == "display_data" and "[cave] approval" in text and not sent:
            sent.append(True)
            kernel.interrupt()

    cell = k.execute("%agent write", timeout=120, on_message=stop_when_asked)
    assert sent, cell.all_text
    assert not target.exists()
    assert "not reached" not in cell.stdout
    _alive_and_intact(k)


def test_timeout_ends_a_step_waiting_for_a_broker_approval(k: StrictKernel) -> None:
    """Nobody answers the approval: the step's timeout ends it, as it does in guard mode.

    Synchronised on the approval appearing, not on a margin: if the timeout fired before the
    request reached the kernel (a very loaded machine), the turn is run again with twice the
    time, until the approval appears first.
    """
    target = k.outside / "timed-out.txt"
    for seconds in (2, 4, 8, 16):
        k.script(reply("", f"open({str(target)!r}, 'w')\nprint('not reached')"), reply("ok"))
        asked: list[bool] = []

        def note_ask(msg: dict[str, Any], kernel: KernelHarness, asked: list[bool] = asked
                     ) -> None:
            text = msg["content"].get("data", {}).get("text/plain", "")
            if msg["msg_type"] == "display_data" and "[cave] approval" in text:
                asked.append(True)

        cell = k.execute(f"%agent --timeout {seconds} write", timeout=120, on_message=note_ask)
        assert cell.status == "ok", cell.all_text
        told = k.tool_results()
        assert "Timed out" in told and "StepTimeout" in told, told
        if asked:
            break
    assert asked, "the approval never appeared before the step's timeout"
    assert not target.exists()
    assert "not reached" not in cell.stdout and "not reached" not in told
    _alive_and_intact(k)


def test_timeout_ends_a_brokered_process(k: StrictKernel) -> None:
    """A brokered process that outlives the step's time is killed with it."""
    assert k.execute("%cave policy allow shell:sleep").status == "ok"
    told = _turn(k, "import subprocess\nsubprocess.run(['sleep', '600'])\nprint('not reached')",
                 timeout="--timeout 2")
    assert "Timed out" in told and "StepTimeout" in told, told
    assert "not reached" not in told
    _alive_and_intact(k)
