"""In a real browser: JupyterLab on a loopback port, headless Debian Chromium driven by Playwright.

Opens ``examples/02-approvals.ipynb`` on the Cave kernel (the model is the loopback Anthropic
server, through the real SDK), runs all cells, clicks **Approve once** on the rendered widget and
checks the cell shows the result. Screenshots before and after the click are saved in the test's
``tmp_path``. A second test types an answer to ``human.ask`` into the question's text box and
presses Send, which proves JupyterLab syncs the box to the kernel before the click arrives.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cave.testing import AnthropicServer, reply

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "02-approvals.ipynb"


def _script(body: dict[str, Any]) -> Any:
    """Scripted replies (a fixture, not a model): write `target`, then report what happened."""
    last = json.dumps(body["messages"][-1])
    if "tool_result" not in last:
        return reply(
            "Writing the plan.",
            "n = fs.write(target, 'Plan for today\\n1. approve\\n')\n"
            "print(f'wrote {n} bytes to {target}')",
        )
    if "PermissionError" in last:
        return reply("The write was denied.")
    return reply("Saved the plan after your approval.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lab:
    """``jupyter lab`` in its own process group, with private config, settings and runtime dirs."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "jupyterlab.log"
        settings = root / "lab-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        full_env = {
            **os.environ,
            **env,
            "JUPYTER_CONFIG_DIR": str(root / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(root / "jupyter-runtime"),
            "JUPYTERLAB_WORKSPACES_DIR": str(root / "lab-workspaces"),
            "JUPYTERLAB_SETTINGS_DIR": str(root / "lab-settings"),
        }
        argv = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root / 'work'}",
            "--LabApp.extension_manager=readonly",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.append("--allow-root")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.log_path.read_text()
                    raise RuntimeError(f"JupyterLab did not start:\n{log}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Lab, AnthropicServer, Path]]:
    yield from _lab(tmp_path, _script, EXAMPLE)


def _lab(
    tmp_path: Path, script: Any, notebook: Path
) -> Iterator[tuple[Lab, AnthropicServer, Path]]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does it)")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(notebook, work)
    server = AnthropicServer(script).start()
    env = {
        "ANTHROPIC_BASE_URL": server.base_url,
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "CAVE_SESSION_DIR": str(tmp_path / "session"),
        "IPYTHONDIR": str(tmp_path / "ipython"),  # no user profile or startup files
    }
    jupyter = Lab(tmp_path, env)
    try:
        yield jupyter, server, tmp_path
    finally:
        jupyter.stop()
        server.stop()


def test_approve_once_in_jupyterlab(lab: tuple[Lab, AnthropicServer, Path]) -> None:
    from playwright.sync_api import sync_playwright

    jupyter, server, out = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1100})
            page.goto(f"{jupyter.url}/lab/tree/{EXAMPLE.name}?token={jupyter.token}")
            page.wait_for_selector("text=Cave (Python 3) | Idle", timeout=90_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            approve = page.locator(".cave-approval button", has_text="Approve once")
            approve.wait_for(timeout=90_000)
            widget = page.locator(".cave-approval")
            assert "fs.write:" in widget.inner_text() and "sha256" in widget.inner_text()
            approve.scroll_into_view_if_needed()
            page.screenshot(path=str(out / "approvals-widget-pending.png"))
            approve.click()

            outputs = page.locator(".jp-OutputArea-output")
            outputs.filter(has_text="Saved the plan after your approval.").wait_for(timeout=60_000)
            outputs.filter(has_text="Plan for today").last.wait_for(timeout=60_000)
            page.wait_for_selector("text=Cave (Python 3) | Idle", timeout=60_000)
            text = "\n".join(outputs.all_inner_texts())
            widgets = widget.count()
            stdin_boxes = page.locator(".jp-Stdin").count()  # a notebook gets no stdin prompt
            disabled = page.locator(".cave-approval button:disabled").count()
            page.screenshot(path=str(out / "approvals-widget-approved.png"), full_page=True)
        finally:
            browser.close()

    assert "wrote 26 bytes to" in text
    assert "approved once by" in text and "via widget" in text
    assert stdin_boxes == 0
    assert widgets == 1 and disabled == 3  # decided: the buttons stopped being clickable
    # The model saw the write's result, once; nothing ran twice.
    assert len(server.requests) == 2
    assert "wrote 26 bytes" in json.dumps(server.requests[1].body["messages"][-1])
    assert (out / "approvals-widget-approved.png").stat().st_size > 10_000


ANSWER = "Use the 2019 sheet; it's the clean one."


def _question_script(body: dict[str, Any]) -> Any:
    """Ask a question with human.ask, then report the answer the code printed."""
    last = json.dumps(body["messages"][-1])
    if "tool_result" not in last:
        return reply("", "a = human.ask('Which sheet should I use?')\nprint('answer:', a)")
    return reply("Got your answer." if ANSWER.replace("'", "") in last.replace("'", "") else "No.")


def test_answer_a_question_in_jupyterlab(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    notebook = tmp_path / "question.ipynb"
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": "%%agent\nAsk me which sheet to use."}
    meta = json.loads(EXAMPLE.read_text())["metadata"]
    notebook.write_text(json.dumps(
        {"cells": [cell], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}
    ))
    fixture = _lab(tmp_path, _question_script, notebook)
    jupyter, server, out = next(fixture)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
            )
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 900})
                page.goto(f"{jupyter.url}/lab/tree/{notebook.name}?token={jupyter.token}")
                page.wait_for_selector("text=Cave (Python 3) | Idle", timeout=90_000)
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

                box = page.locator(".cave-approval textarea")
                box.wait_for(timeout=90_000)
                assert "Which sheet should I use?" in page.locator(".cave-approval").inner_text()
                box.fill(ANSWER)
                page.locator(".cave-approval button", has_text="Send").click()
                outputs = page.locator(".jp-OutputArea-output")
                outputs.filter(has_text="Got your answer.").wait_for(timeout=60_000)
                page.wait_for_selector("text=Cave (Python 3) | Idle", timeout=60_000)
                text = "\n".join(outputs.all_inner_texts())
                disabled = page.locator(".cave-approval button:disabled").count()
                page.screenshot(path=str(out / "question-answered.png"), full_page=True)
            finally:
                browser.close()
    finally:
        fixture.close()

    assert f"answered ({len(ANSWER)} characters) by" in text and "via widget" in text
    assert disabled == 2
    assert len(server.requests) == 2
    assert f"answer: {ANSWER}" in json.dumps(server.requests[1].body["messages"][-1])
