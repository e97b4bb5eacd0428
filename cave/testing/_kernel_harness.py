"""Drive a real Cave kernel over ZMQ, as a frontend would, for tests and benchmarks.

The harness writes a private kernelspec (so nothing needs installing), starts the kernel with
``jupyter_client``, and collects every IOPub message of each request, comm messages included, so a
test can answer a widget exactly as JupyterLab would.
"""

from __future__ import annotations

import os
import queue
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..kernel._install import KERNEL_NAME, write_kernelspec


@dataclass
class CellResult:
    """What one ``execute_request`` produced."""

    reply: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.reply.get("status"))

    def of_type(self, *msg_types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in msg_types]

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stdout"
        )

    @property
    def stderr(self) -> str:
        return "".join(
            m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stderr"
        )

    def texts(self, mime: str = "text/plain") -> list[str]:
        """Every display, update and result in ``mime``, in order."""
        kinds = ("display_data", "update_display_data", "execute_result")
        return [
            m["content"]["data"][mime]
            for m in self.of_type(*kinds)
            if mime in m["content"].get("data", {})
        ]

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.of_type("error")
        return errors[-1]["content"] if errors else None

    @property
    def all_text(self) -> str:
        """Everything a person would read in the cell, as text."""
        parts = [self.stdout, self.stderr, *self.texts()]
        if self.error:
            parts.append(f"{self.error['ename']}: {self.error['evalue']}")
        return "\n".join(parts)


class KernelHarness:
    """A Cave kernel in a subprocess, and a blocking client for it."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        kernel_name: str = KERNEL_NAME,
        startup_timeout: float = 60.0,
        extra_spec: Mapping[str, Any] | None = None,
    ) -> None:
        self.env = dict(env or {})
        self.cwd = str(cwd) if cwd is not None else None
        self.kernel_name = kernel_name
        self.startup_timeout = startup_timeout
        self.extra_spec = dict(extra_spec or {})
        self._specdir: str | None = None
        self.km: Any = None
        self.kc: Any = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> KernelHarness:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        self._specdir = tempfile.mkdtemp(prefix="cave-spec-")
        spec_dir = write_kernelspec(Path(self._specdir) / self.kernel_name, sys.executable)
        if self.extra_spec:
            import json

            spec = json.loads((spec_dir / "kernel.json").read_text())
            spec.update(self.extra_spec)
            (spec_dir / "kernel.json").write_text(json.dumps(spec))
        ksm = KernelSpecManager(kernel_dirs=[self._specdir])
        self.km = KernelManager(kernel_name=self.kernel_name, kernel_spec_manager=ksm)
        env = {**os.environ, **self.env}
        self.km.start_kernel(env=env, cwd=self.cwd)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=self.startup_timeout)
        return self

    def stop(self) -> None:
        try:
            if self.kc is not None:
                self.kc.stop_channels()
            if self.km is not None and self.km.has_kernel:
                self.km.shutdown_kernel(now=True)
        finally:
            self.kc = self.km = None
            if self._specdir:
                shutil.rmtree(self._specdir, ignore_errors=True)
                self._specdir = None

    def restart(self) -> None:
        """Kill and start the kernel again (a crash-and-restart, as JupyterLab's restart does)."""
        self.km.restart_kernel(now=True)
        self.kc.stop_channels()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=self.startup_timeout)

    def __enter__(self) -> KernelHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- requests ---------------------------------------------------------------------------
    def execute(
        self,
        code: str,
        *,
        timeout: float = 60.0,
        on_message: Callable[[dict[str, Any], KernelHarness], None] | None = None,
        stdin: Callable[[dict[str, Any]], str] | None = None,
    ) -> CellResult:
        """Run ``code`` and collect its IOPub messages until the kernel is idle again.

        ``on_message`` sees each IOPub message as it arrives (to click a widget, or to interrupt);
        ``stdin`` answers ``input()`` requests.
        """
        msg_id = self.kc.execute(code, allow_stdin=stdin is not None)
        result = CellResult(reply={})
        deadline = time.monotonic() + timeout
        idle = False
        while not idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"cell did not finish within {timeout} s:\n{code[:200]}")
            if stdin is not None:
                self._answer_stdin(stdin)
            try:
                msg = self.kc.get_iopub_msg(timeout=min(0.05, remaining))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            result.messages.append(msg)
            if on_message is not None:
                on_message(msg, self)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        result.reply = self._shell_reply(msg_id, max(1.0, deadline - time.monotonic()))
        return result

    def _shell_reply(self, msg_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            reply = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                return dict(reply["content"])

    def _answer_stdin(self, answer: Callable[[dict[str, Any]], str]) -> None:
        try:
            msg = self.kc.get_stdin_msg(timeout=0.001)
        except queue.Empty:
            return
        if msg["msg_type"] == "input_request":
            self.kc.input(answer(msg["content"]))

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def comm_msg(self, comm_id: str, data: Mapping[str, Any]) -> None:
        """Send a comm message from the frontend side (what a widget click sends)."""
        content = {"comm_id": comm_id, "data": dict(data)}
        msg = self.kc.session.msg("comm_msg", content)
        self.kc.shell_channel.send(msg)
