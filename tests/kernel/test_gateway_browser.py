"""Cave behind Jupyter Kernel Gateway, driven from JupyterLab (``--gateway-url``) in Chromium.

A real ``jupyter kernelgateway`` runs the kernels; JupyterLab only forwards to it. Through the
gateway: the quickstart runs offline end to end, an approval widget is clicked (a comm message
over the gateway's WebSocket), and the stop button stops a turn spinning in ``while True: pass``
(an ``interrupt_mode: "message"`` interrupt, which the gateway forwards on the control channel).
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

pytestmark = [pytest.mark.browser, pytest.mark.slow]
pytest.importorskip("kernel_gateway")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IDLE = "text=Cave (Python 3) | Idle"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A Jupyter server process in its own process group, ready when ``probe`` answers."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path, probe: str,
                 headers: dict[str, str]) -> None:
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(probe, headers=headers),
                                            timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{argv[2]} did not start:\n{log.read_text()}") from None
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


def _notebook(target: Path) -> dict:
    code = (
        "import cave\nfrom cave.testing import AnthropicServer, reply\n"
        f"target = {str(target)!r}\n"
        "server = AnthropicServer([\n"
        "    reply('Writing the plan.',\n"
        "          \"n = fs.write(target, 'plan')\\nprint(f'wrote {n} bytes')\"),\n"
        "    reply('Saved the plan after your approval.'),\n"
        "    reply('Spinning.', 'print(\"spinning now\", flush=True)\\nwhile True:\\n    pass'),\n"
        "    reply('unreachable'),\n"
        "]).start()\n"
        "cave.inject('target', target)\n"
        "cave.session().use_endpoint(server.base_url)\nprint('scripted server ready')"
    )
    cells = [code, "%%agent\nwrite the plan", "%%agent\nspin until stopped",
             "print('after the stop')"]
    meta = json.loads((EXAMPLES / "01-quickstart.ipynb").read_text())["metadata"]
    return {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                       "source": c, "id": f"c{i}"} for i, c in enumerate(cells)],
            "metadata": meta, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def gateway_lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does it)")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(EXAMPLES / "01-quickstart.ipynb", work)
    env = {**os.environ, "CAVE_SESSION_DIR": str(tmp_path / "session"),
           "IPYTHONDIR": str(tmp_path / "ipython"), "CAVE_AUTOCHECKPOINT": "0",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime")}
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        env.pop(var, None)  # the notebooks start their own scripted server
    kg_port, lab_port = _free_port(), _free_port()
    kg_token, lab_token = secrets.token_hex(16), secrets.token_hex(16)
    gateway = Server(
        [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
         f"--KernelGatewayApp.port={kg_port}", f"--KernelGatewayApp.auth_token={kg_token}",
         "--KernelGatewayApp.port_retries=0",
         "--JupyterWebsocketPersonality.list_kernels=True",  # JupyterLab lists kernels
         # Kernel Gateway gives kernels only PATH and the variables named here (docs/deploy.md)
         "--KernelGatewayApp.env_process_whitelist=CAVE_SESSION_DIR"],
        env, work, tmp_path / "gateway.log", f"http://127.0.0.1:{kg_port}/api/kernelspecs",
        {"Authorization": f"token {kg_token}"},
    )
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    lab_env = {**env, "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces")}
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--port={lab_port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={lab_token}", f"--ServerApp.root_dir={work}",
            "--LabApp.extension_manager=readonly", f"--gateway-url=http://127.0.0.1:{kg_port}",
            f"--GatewayClient.auth_token={kg_token}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")
    try:
        lab = Server(argv, lab_env, work, tmp_path / "jupyterlab.log",
                     f"http://127.0.0.1:{lab_port}/api/status?token={lab_token}", {})
    except BaseException:
        gateway.stop()
        raise
    try:
        yield f"http://127.0.0.1:{lab_port}", lab_token, tmp_path  # type: ignore[misc]
    finally:
        lab.stop()
        gateway.stop()


def _wait_idle(page: Any, attempts: int = 6) -> int:
    """Wait until the notebook's kernel reports Idle; returns how many reconnects that took.

    Behind ``--gateway-url``, JupyterLab 4.6 opens a kernel's WebSocket, drops it at once and
    opens it again with the same session id; now and then (about 1 run in 3 here, at any load)
    the gateway then keeps the dropped connection ("Replacing stale connection") and the page's
    kernel stays "Unknown" for good, with the kernel itself up. That is upstream
    (jupyter_server's gateway client with Kernel Gateway 3), not Cave. A person clicks Kernel >
    Reconnect to Kernel; so does this test, after each 40 s without Idle. Waiting longer than
    needed costs time, never the result: the test passes only once the kernel says Idle.
    """
    for reconnects in range(attempts - 1):
        try:
            page.wait_for_selector(IDLE, timeout=40_000)
            return reconnects
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: not Idle yet
            page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Reconnect to Kernel").first.click()
    page.wait_for_selector(IDLE, timeout=40_000)  # the last try: its timeout fails the test
    return attempts - 1


def _diagnosis(page: Any, root: Path) -> str:
    """What the page showed and what both servers logged last: enough to tell why a wait failed."""
    try:
        status = page.locator(".jp-StatusBar-Widget").all_inner_texts()
        dialogs = page.locator(".jp-Dialog").all_inner_texts()
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure
        status, dialogs = [f"(page unreadable: {exc})"], []
    tails = {name: "\n".join((root / name).read_text(errors="replace").splitlines()[-25:])
             for name in ("gateway.log", "jupyterlab.log") if (root / name).exists()}
    return (f"status bar: {status}\ndialogs: {dialogs}\n"
            + "\n".join(f"--- last lines of {k}:\n{v}" for k, v in tails.items()))


@pytest.mark.timeout(900)  # two notebooks and a kernel each, through two servers (and reconnects)
def test_quickstart_approval_and_stop_through_the_gateway(gateway_lab) -> None:  # type: ignore
    from playwright.sync_api import sync_playwright

    url, token, root = gateway_lab
    target = root / "outside" / "plan.txt"
    target.parent.mkdir()
    (root / "work" / "gateway.ipynb").write_text(json.dumps(_notebook(target)))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1100})
            # 1. The quickstart, end to end, on a kernel the gateway runs.
            page.goto(f"{url}/lab/tree/01-quickstart.ipynb?token={token}")
            reconnects = _wait_idle(page)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            outputs = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output")
            outputs.filter(has_text="three best months").last.wait_for(timeout=150_000)
            page.wait_for_selector(IDLE, timeout=60_000)
            quick = "\n".join(outputs.all_inner_texts())
            page.screenshot(path=str(root / "gateway-quickstart.png"), full_page=True)

            # 2. An approval clicked, then 3. the stop button, in another notebook.
            page.close()  # a fresh page and workspace: only this notebook open, and focused
            page = browser.new_page(viewport={"width": 1300, "height": 1100})
            page.goto(f"{url}/lab/workspaces/second/tree/gateway.ipynb?token={token}")
            reconnects += _wait_idle(page)
            print(f"kernel WebSocket reconnects needed (upstream gateway race): {reconnects}")
            page.locator(".jp-NotebookPanel:visible .jp-Cell").first.click()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            approve = page.locator(".cave-approval button", has_text="Approve once")
            approve.wait_for(timeout=120_000)
            approve.click()
            outputs = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output")
            outputs.filter(has_text="Saved the plan after your approval.").wait_for(timeout=60_000)
            outputs.filter(has_text="spinning now").last.wait_for(timeout=60_000)
            page.locator(".jp-NotebookPanel:visible [data-command='notebook:interrupt-kernel']"
                         ).first.click()
            outputs.filter(has_text="Interrupted during step").wait_for(timeout=30_000)
            page.wait_for_selector(IDLE, timeout=60_000)
            text = "\n".join(outputs.all_inner_texts())
            page.screenshot(path=str(root / "gateway-approval-stop.png"), full_page=True)
        except BaseException as exc:
            page.screenshot(path=str(root / "gateway-failure.png"), full_page=True)
            raise AssertionError(_diagnosis(page, root)) from exc
        finally:
            browser.close()

    assert "Scripted demo server (not Claude)" in quick and "out tokens" in quick
    assert all(region in quick for region in ("north", "south", "east", "west"))
    assert "wrote 4 bytes" in text and "approved once by" in text
    assert target.read_text() == "plan"
    assert "after the stop" not in text  # Run All stops at the interrupted cell
    audit = (root / "session" / "audit.jsonl").read_text()  # the session dir we passed through
    assert '"approval.decided"' in audit and "plan.txt" in audit
    gateway_log = (root / "gateway.log").read_text()
    assert "Kernel started" in gateway_log  # the kernels ran in the gateway, not in JupyterLab
