"""Output of threads that were running before a step (a user's, a subshell) is not the agent's."""

from __future__ import annotations

import io
import sys
import threading
import time

from cave.runtime import AgentRuntime


def test_bystander_output_passes_through_and_agent_threads_are_captured() -> None:
    runtime = AgentRuntime()
    real = io.StringIO()
    stop = threading.Event()
    started = threading.Event()

    def user_background() -> None:  # started before the step: a bystander
        started.set()
        while not stop.is_set():
            print("user tick", file=sys.stdout)
            time.sleep(0.005)

    old = sys.stdout
    sys.stdout = real
    bystander = threading.Thread(target=user_background)
    bystander.start()
    try:
        assert started.wait(5)
        code = (
            "import threading, time\n"
            "print('agent says hi')\n"
            "t = threading.Thread(target=lambda: print('agent thread says hi'))\n"
            "t.start(); t.join()\n"
            "time.sleep(0.1)\n"
        )
        result = runtime.run(code, echo=True)
    finally:
        stop.set()
        bystander.join(5)
        sys.stdout = old

    assert "agent says hi" in result.output
    assert "agent thread says hi" in result.output  # a thread the agent started is the agent's
    assert "user tick" not in result.output  # the model never reads the user's thread
    shown = real.getvalue()
    assert "user tick" in shown and "agent says hi" in shown  # both still reach the notebook


def test_unknown_attributes_are_the_original_streams() -> None:
    class KernelStream(io.StringIO):
        def set_parent(self, parent: object) -> str:
            return f"parent set to {parent}"

    runtime = AgentRuntime()
    old = sys.stdout
    sys.stdout = KernelStream()
    try:
        result = runtime.run("print(__import__('sys').stdout.set_parent('p'))", echo=False)
    finally:
        sys.stdout = old
    assert "parent set to p" in result.output
