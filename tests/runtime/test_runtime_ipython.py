"""The executor inside a real IPython kernel: live output, rich displays, the final value as HTML.

One plain ipykernel subprocess (``python3`` kernelspec of this venv), driven over ZMQ on
127.0.0.1 with jupyter_client. The runtime runs in a worker thread started by
``asyncio.to_thread``, as the agent loop does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel

SETUP = """
import asyncio
import pandas as pd
from cave.runtime._namespace import AgentRuntime
rt = AgentRuntime()
rt.inject("df", pd.DataFrame({"alpha": [1, 2], "beta": [3, 4]}))
"""


@pytest.fixture(scope="module")
def kernel() -> Iterator[BlockingKernelClient]:
    km: KernelManager
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        reply = kc.execute_interactive(SETUP, timeout=60)
        assert reply["content"]["status"] == "ok"
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kc: BlockingKernelClient, code: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, timeout=60, output_hook=messages.append)
    assert reply["content"]["status"] == "ok", reply["content"]
    return messages


def streams(messages: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def displays(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["content"]["data"] for m in messages if m["msg_type"] == "display_data"]


def test_output_displays_and_value_reach_the_cell_and_the_model(
    kernel: BlockingKernelClient,
) -> None:
    agent_code = (
        "print('live line')\n"
        "from IPython.display import display, HTML\n"
        "display(HTML('<b>bold</b>'))\n"
        "df"
    )
    messages = execute(
        kernel,
        f"r = await asyncio.to_thread(rt.run, {agent_code!r})\n"
        "print('MODEL>>' + r.for_model() + '<<MODEL')",
    )
    out = streams(messages)
    assert out.startswith("live line\n")  # echoed live, before the cell's own print
    shown = displays(messages)
    assert shown[0]["text/html"] == "<b>bold</b>"  # passed through unchanged
    assert "<table" in shown[1]["text/html"] and "alpha" in shown[1]["text/html"]
    assert len(shown) == 2
    model = out.split("MODEL>>", 1)[1].split("<<MODEL", 1)[0]
    assert model.startswith("live line\n[display: <IPython.core.display.HTML object>]\nOut: ")
    assert "alpha" in model and "beta" in model
    assert model.count("[display") == 1  # the final value is "Out:", not a display summary


def test_echo_false_keeps_the_cell_clean(kernel: BlockingKernelClient) -> None:
    agent_code = "print('hidden')\nfrom IPython.display import display\ndisplay({'a': 1})\ndf"
    messages = execute(
        kernel,
        f"r = await asyncio.to_thread(rt.run, {agent_code!r}, echo=False)\n"
        "print('MODEL>>' + r.for_model())",
    )
    assert displays(messages) == []
    out = streams(messages)
    assert out.startswith("MODEL>>hidden\n[display: {'a': 1}]\nOut: ")
    publish = execute(kernel, "print('publish' in vars(get_ipython().display_pub))")
    assert streams(publish) == "False\n"  # the wrapper was removed after the run


def test_exit_in_agent_code_keeps_the_kernel(kernel: BlockingKernelClient) -> None:
    messages = execute(
        kernel,
        "r = await asyncio.to_thread(rt.run, 'exit()', echo=False)\n"
        "print('SystemExit' in r.error, rt.run('1 + 1', echo=False).value_repr)",
    )
    assert streams(messages) == "True 2\n"
    assert execute(kernel, "print('alive')") and streams(execute(kernel, "print(2)")) == "2\n"
