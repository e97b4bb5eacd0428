"""How the Deno process is started: its command line and its environment, from pure functions.

Tools get **no** Deno permissions. Whatever a tool's capabilities are, ``deno_command`` adds no
``--allow-*`` flag: every effect goes through a syscall to Cave, where the broker resolves the
path, host or program itself and checks it against the tool's capabilities and the session
policy. This is deliberate: Deno's ``--allow-read=DIR`` follows a symlink inside ``DIR`` that
points outside it, so a granted directory would be a wider grant than it says. The main process
needs no permission either (workers start from ``data:`` URLs, which need no read access).

Kept pure (no I/O, no environment lookups) so that a test can pin the flags exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["deno_command", "deno_env", "permission_flags"]


def permission_flags(capabilities: Iterable[str]) -> tuple[str, ...]:
    """The Deno ``--allow-*`` flags a tool with ``capabilities`` gets: none, for any input.

    Capabilities are enforced by Cave's broker on each syscall, never by Deno; a tool that calls
    ``Deno.readTextFile`` or ``fetch`` itself meets Deno's ``NotCapable`` error.
    """
    del capabilities  # enforced per syscall by the broker, never turned into Deno flags
    return ()


def deno_command(deno: str, runner: str, *, heap_mb: int) -> list[str]:
    """``deno run`` for the broker: no prompt, no remote or npm modules, no config discovery."""
    if heap_mb < 16:
        raise ValueError(f"heap_mb must be at least 16 (MB), not {heap_mb}")
    return [
        deno,
        "run",
        "--quiet",
        "--no-prompt",
        "--no-remote",
        "--no-npm",
        "--cached-only",
        "--no-config",
        "--no-lock",
        "--no-check",
        "--unstable-worker-options",  # Worker({deno: {permissions: "none"}})
        f"--v8-flags=--max-old-space-size={int(heap_mb)}",
        *permission_flags(()),
        runner,
    ]


def deno_env(deno_dir: str) -> dict[str, str]:
    """The whole environment of the Deno process: nothing inherited from the kernel."""
    return {
        "DENO_DIR": deno_dir,
        "DENO_NO_UPDATE_CHECK": "1",
        "DENO_NO_PROMPT": "1",
        "NO_COLOR": "1",
        "PATH": "/nonexistent",
    }
