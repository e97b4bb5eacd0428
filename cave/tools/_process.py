"""The session's one Deno process: started, fed frames, read, killed and started again.

The process is *owned* (STYLE.md 11): its own process group (a kill takes the workers too), a
whole environment built by ``deno_env`` (none of the kernel's secrets), no inherited descriptors
(``close_fds``), stdin/stdout for JSON-line frames and stderr kept as a short tail for error
messages. Starting and killing it happens on an owner thread that is not agent code, so that a
tool called from an agent step does not look like the agent running ``deno`` itself to the guard.

Frames from the process are checked before anyone acts on them: one JSON object per line,
carrying the token sent in ``hello``. Anything else is *malformed*: the reader reports it and
the caller kills the process (a stream that lied once cannot be trusted to frame the next line).
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from .._errors import ToolError
from ._flags import deno_command, deno_env

__all__ = ["Closed", "DenoProcess", "Malformed", "Owner", "deno_binary"]

T = TypeVar("T")
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""A longer line from Deno is malformed (results and logs are limited well below this)."""
_STDERR_TAIL = 8192


def deno_binary() -> str:
    """The ``deno`` executable of the PyPI ``deno`` package (nothing is downloaded)."""
    try:
        import deno
    except ImportError:
        raise ToolError(
            "TypeScript tools need the PyPI package 'deno' (a dependency of Cave): "
            "pip install deno"
        ) from None
    path = str(deno.find_deno_bin())
    if not os.access(path, os.X_OK):
        raise ToolError(
            f"the deno binary at {path} is not executable; reinstall: pip install -U deno"
        )
    return path


def runner_file(name: str) -> str:
    """A file of the TypeScript runner shipped as package data."""
    return str(resources.files("cave.tools").joinpath("runner", name))


@dataclass(frozen=True)
class Closed:
    """The process's stdout ended: it exited or was killed."""

    returncode: int | None
    stderr: str


@dataclass(frozen=True)
class Malformed:
    """A line from the process that is not a frame (bad JSON, wrong token, not an object)."""

    problem: str
    line: str


class Owner:
    """One thread that is not agent code, for starting and killing the Deno process."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._loop, name="cave-deno-owner", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self._jobs.get()
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: B036 - handed to the waiting caller
                box.append((False, exc))
            finally:
                done.set()

    def run(self, fn: Callable[[], T]) -> T:
        box: list[Any] = []
        done = threading.Event()
        self._jobs.put((fn, box, done))
        while not done.wait(0.05):  # a timed wait lets the stop button's exception in
            pass
        ok, value = box[0]
        if not ok:
            raise value
        result: T = value
        return result


class DenoProcess:
    """A running ``deno run main.ts``; ``frames`` yields dicts, then ``Malformed``/``Closed``."""

    def __init__(
        self, deno: str, *, deno_dir: Path, heap_mb: int, runner: str | None = None
    ) -> None:
        """Start the process (call on the owner thread) and wait for its ``ready`` frame."""
        deno_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.token = secrets.token_hex(16)
        self.frames: queue.SimpleQueue[dict[str, Any] | Malformed | Closed] = queue.SimpleQueue()
        self._stderr = bytearray()
        self._write_lock = threading.Lock()
        self.proc = subprocess.Popen(
            deno_command(deno, runner or runner_file("main.ts"), heap_mb=heap_mb),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=deno_env(str(deno_dir)),
            cwd=str(deno_dir),
            close_fds=True,
            start_new_session=True,  # its own process group: kill() takes every worker with it
        )
        self.pid = self.proc.pid
        threading.Thread(target=self._read, name="cave-deno-stdout", daemon=True).start()
        threading.Thread(target=self._drain, name="cave-deno-stderr", daemon=True).start()
        with open(runner_file("worker.ts"), encoding="utf-8") as f:
            worker = f.read()
        self.send({"type": "hello", "token": self.token, "worker": worker})
        self.version = ""

    def wait_ready(self, timeout: float) -> str:
        """The Deno version from the ``ready`` frame; ToolError if it does not come."""
        try:
            frame = self.frames.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise ToolError(
                f"the Deno process did not start within {timeout:g} s (killed); the machine may "
                "be overloaded, try the call again"
            ) from None
        if not isinstance(frame, dict) or frame.get("type") != "ready":
            self.kill()
            raise ToolError(f"the Deno process did not start: {describe_end(frame)}")
        self.version = str(frame.get("deno", ""))
        return self.version

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, frame: dict[str, Any]) -> None:
        data = (json.dumps(frame, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        stdin = self.proc.stdin
        assert stdin is not None
        with self._write_lock:
            try:
                stdin.write(data)
                stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # the reader reports the process's end

    def kill(self) -> None:
        """SIGKILL the process group and reap it (call on the owner thread)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin,):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def stderr_tail(self) -> str:
        return bytes(self._stderr[-_STDERR_TAIL:]).decode("utf-8", "replace")

    # -- readers (threads started from the owner thread) ----------------------------------------
    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        token = self.token
        while True:
            line = stdout.readline(MAX_FRAME_BYTES + 1)
            if not line:
                break
            if len(line) > MAX_FRAME_BYTES:
                self.frames.put(Malformed("a line longer than 64 MiB", _show(line[:200])))
                break
            try:
                frame = json.loads(line)
            except ValueError as exc:
                self.frames.put(Malformed(f"not JSON ({exc})", _show(line)))
                continue
            if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                self.frames.put(Malformed("not a frame object with a type", _show(line)))
                continue
            if frame.pop("t", None) != token:
                self.frames.put(Malformed("a frame without this process's token", _show(line)))
                continue
            self.frames.put(frame)
        try:
            returncode = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            returncode = None
        self.frames.put(Closed(returncode, self.stderr_tail()))

    def _drain(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        fd = stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self._stderr += chunk
            if len(self._stderr) > 4 * _STDERR_TAIL:
                del self._stderr[: -_STDERR_TAIL]


def _show(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip("\n")
    return text if len(text) <= 200 else text[:200] + "..."


def describe_end(item: Any) -> str:
    """Why the process stopped answering, for an error message."""
    if isinstance(item, Malformed):
        return f"it wrote a malformed frame ({item.problem}): {item.line!r}"
    if isinstance(item, Closed):
        code = item.returncode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            how = f"it was killed by signal {name}"
        else:
            how = f"it exited with status {code}"
        tail = item.stderr.strip()
        if "heap out of memory" in tail or "heap limit" in tail:
            how += " after running out of V8 heap (the heap_mb limit)"
        elif tail:
            how += ": " + tail.splitlines()[-1][:300]
        return how
    return f"unexpected {item!r}"[:300]
