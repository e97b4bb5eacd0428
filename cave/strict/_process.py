"""The worker process: how it is started, confined, signalled and reaped.

Spawned, never forked from the kernel: ``subprocess.Popen`` execs a fresh interpreter (CPython uses
``vfork``/``exec`` for this, so no kernel memory, lock state or thread is copied into it), with
``close_fds`` (only the channel is passed), a scrubbed environment, its own session and process
group, stdin ``/dev/null`` and stdout/stderr pipes. The first message on the channel is the
confinement spec; the worker answers ``ready`` only once ``confine_current_process`` succeeded,
or the reason it could not, and then exits. The kernel never runs agent code in a worker that did
not confirm its confinement.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ._channel import Channel, pair
from ._unpickle import safe_loads

__all__ = ["StrictSettings", "WorkerProcess", "worker_argv"]


@dataclass(frozen=True)
class StrictSettings:
    """How strict mode runs its worker."""

    step_memory: int | None = 8 * 2**30
    """Bytes of address space one step may add (``RLIMIT_AS`` soft limit over what the worker
    already maps, shared memory included); past it allocations fail with ``MemoryError``.
    None: no per-step limit."""
    memory_limit: int | None = None
    """Hard ``RLIMIT_AS`` for the worker's whole life (agent code cannot raise it). None: none."""
    grace_s: float = 2.0
    """After a stop or a timeout sends SIGINT, seconds before the worker is killed (SIGKILL)."""
    start_timeout_s: float = 60.0
    """Seconds a new worker may take to confine itself and say it is ready."""

    def with_step_memory(self, limit: int | None) -> StrictSettings:
        return replace(self, step_memory=limit)

    def with_grace(self, seconds: float) -> StrictSettings:
        return replace(self, grace_s=seconds)


STALL_TIMEOUT_S = 30.0
PRELOAD = ("numpy", "pandas")
"""Imported by a new worker when the kernel has them: the first injected frame then costs
its copy, not the import."""


def worker_argv(fd: int, python: str = sys.executable) -> list[str]:
    """The worker's command line: isolated mode (no PYTHON* variables, no cwd on sys.path)."""
    return [python, "-I", "-u", "-m", "cave.strict._worker", str(fd)]


def static_trees(scratch: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(read-only, read-write) trees the worker gets without asking: Python and its scratch dir.

    Not the workspace: Landlock can only grant, so a workspace tree would also grant ``.env``,
    ``*.pem``, ``cave.toml`` and the session directory, which the policy asks or denies. Every
    workspace file goes through the broker instead.
    """
    from ..security._confinement import default_read_only_paths

    cave_dir = str(Path(__file__).resolve().parent.parent)
    read_only = tuple(dict.fromkeys([*default_read_only_paths(), cave_dir]))
    return read_only, (scratch,)


class WorkerProcess:
    """One running, confined worker and the kernel's end of its channel."""

    def __init__(self, *, cwd: Path, env: Mapping[str, str], primitives: tuple[str, ...],
                 settings: StrictSettings) -> None:
        self.scratch = tempfile.mkdtemp(prefix="cave-strict-")
        channel, child = pair()
        self.channel: Channel = channel
        read_only, read_write = static_trees(self.scratch)
        env = {**env, "TMPDIR": self.scratch}
        try:
            self.proc = subprocess.Popen(
                worker_argv(child.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(child.fileno(),),
                close_fds=True,
                env=env,
                cwd=str(cwd),
                start_new_session=True,
            )
        finally:
            child.close()
        self.pid = self.proc.pid
        self.read_only, self.read_write = read_only, read_write
        hello = {"read_only": list(read_only), "read_write": list(read_write),
                 "memory_limit": settings.memory_limit, "step_memory": settings.step_memory,
                 "primitives": list(primitives), "cwd": str(cwd),
                 "preload": [m for m in PRELOAD if m in sys.modules]}
        try:
            channel.sock.settimeout(settings.start_timeout_s)
            channel.send(hello)
            ready, fds = channel.recv(safe_loads)
            for fd in fds:
                os.close(fd)
            # select() waits for a message to begin; a message that stalls half way through for
            # this long is a protocol violation (a worker writing junk), not a wait for ever.
            channel.sock.settimeout(STALL_TIMEOUT_S)
        except BaseException as exc:
            err = self._stderr_now()
            self.kill()
            raise _StartFailed(f"the worker did not start: {exc}. {err}".strip()) from None
        if ready.get("op") != "ready" or ready.get("error"):
            err = ready.get("error") or f"unexpected first message {ready.get('op')!r}"
            self.kill()
            raise _StartFailed(str(err))

    def _stderr_now(self) -> str:
        try:
            self.proc.wait(timeout=1)
            assert self.proc.stderr is not None
            return self.proc.stderr.read().decode("utf-8", "replace")[-2000:]
        except Exception:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Signal the worker's whole process group (threads and anything it started)."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> int:
        """SIGKILL the group, reap, close pipes and channel, remove the scratch dir."""
        self.signal(signal.SIGKILL)
        try:
            code = self.proc.wait()
        finally:
            self.close_files()
        return code

    def close_files(self) -> None:
        self.channel.close()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        shutil.rmtree(self.scratch, ignore_errors=True)


class _StartFailed(Exception):
    pass


def describe_exit(code: int | None) -> str:
    """Why the worker ended, for the model: a signal by name, or an exit status."""
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGSEGV": "a segmentation fault", "SIGKILL": "it was killed (SIGKILL: a stop, "
               "a timeout or the system running out of memory)", "SIGSYS": "a forbidden system "
               "call (seccomp)", "SIGABRT": "an abort", "SIGBUS": "a bus error"}.get(name, name)
        return f"{why} ({name})"
    return f"it exited with status {code}"



