"""What agent code defines in strict mode (functions, classes, their instances) outlives its worker.

The worker pickles such values by value; the kernel keeps the bytes without ever loading them
(they could run code the confined worker chose) and hands them to the next worker: after a
crash, through a checkpoint, and into guard mode (loaded by the next agent step, under the guard).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from strict_helpers import StrictKernel, needs_strict

from cave.testing import reply

pytestmark = [pytest.mark.slow, needs_strict]

DEFINE = """\
bonus = 0
def double(x):
    return 2 * x + bonus
class Box:
    def __init__(self, v):
        self.v = v
    def get(self):
        return self.v
box = Box(21)
table = {'double': double}
"""

USE = """\
box.v += 1
bonus = 100
print('uses', double(box.get()), table['double'](0), type(box).__name__, isinstance(box, Box))
"""


@pytest.fixture(scope="module")
def k(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictKernel]:
    with StrictKernel(tmp_path_factory.mktemp("strict-persist")) as kernel:
        yield kernel


def _turn(k: StrictKernel, code: str) -> str:
    k.script(reply("", code), reply("ok"))
    cell = k.execute("%agent go", timeout=120)
    assert cell.status == "ok", cell.all_text
    return k.tool_results()


def test_definitions_survive_a_killed_worker(k: StrictKernel) -> None:
    told = _turn(k, DEFINE)
    assert "stays in the worker only" not in told, told
    _turn(k, "box.v = 30")  # an in-place change of an instance, in a later step
    told = _turn(k, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert "StrictWorkerCrashed" in told, told
    # A new worker: the function reads the namespace's current `bonus` (its globals are the
    # namespace, not a copy), and `box` kept the value it had before the crash.
    assert "uses 162 100 Box True" in _turn(k, USE)


def test_the_kernel_holds_them_as_bytes_it_does_not_load(k: StrictKernel) -> None:
    _turn(k, DEFINE)
    shown = k.value("repr(cave.retrieve('double'))")
    assert "defined by agent code in the strict-mode worker" in shown, shown
    assert "never loads" in shown
    assert k.value("type(cave.retrieve('box')).__name__") == "WorkerValue"
    # The model's list of its variables names the held type, not the holder.
    listed = k.value("dict(cave.session().runtime.agent_variables())")
    assert "'double': 'function'" in listed and "'box': 'Box'" in listed, listed
    # Plain data still comes back as live objects.
    assert k.value("cave.retrieve('bonus')") == "0"


def test_an_object_that_runs_code_when_loaded_never_runs_in_the_kernel(k: StrictKernel) -> None:
    marker = k.outside / "ran-in-the-kernel"
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    code = (f"class Evil:\n    def __reduce__(self):\n        return (eval, ({touch!r},))\n"
            "evil = Evil()")
    told = _turn(k, code)
    assert not marker.exists(), told
    assert k.value("type(cave.retrieve('evil')).__name__") == "WorkerValue"
    assert not marker.exists()
    _turn(k, "del evil")  # a new worker would load it (and ask to open the file) at its start


def test_definitions_survive_a_checkpoint_restore(k: StrictKernel) -> None:
    _turn(k, DEFINE)
    saved = k.execute("%checkpoint save with-definitions")
    assert saved.status == "ok", saved.all_text
    _turn(k, "del double, Box, box, table")
    restored = k.execute("%checkpoint restore with-definitions")
    assert restored.status == "ok", restored.all_text
    assert "uses 144 100 Box True" in _turn(k, USE)


def test_definitions_follow_a_switch_to_guard_mode_and_back(k: StrictKernel) -> None:
    _turn(k, DEFINE)
    assert "mode: guard" in k.execute("%cave mode guard").stdout
    try:
        # Not loaded by the switch: only an agent step loads it, as agent code, under the guard.
        assert k.value("type(cave.retrieve('double')).__name__") == "WorkerValue"
        assert "uses 144 100 Box True" in _turn(k, USE)
        assert k.value("cave.retrieve('double')(5)") == "110"  # a live function now
    finally:
        assert "mode: strict" in k.execute("%cave mode strict", timeout=90).stdout
    assert "uses 146 100 Box True" in _turn(k, USE)
