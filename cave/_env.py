"""Every environment variable Cave reads, in one place, and the user's config directory.

Kernels are started by Jupyter, not by the user, so the environment is how settings reach a new
kernel (``cave resume`` sets ``CAVE_RESUME`` for the kernels it starts, for example).
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_ENV = "CAVE_MODEL"
"""Model id for agent turns (``claude-...``, ``openai:NAME``, ``openai-fenced:NAME``)."""
SCRIPT_ENV = "CAVE_SCRIPT"
"""Path of a JSON script of replies: the session uses a *scripted* model (a test fixture)."""
SESSION_DIR_ENV = "CAVE_SESSION_DIR"
"""The session directory (audit log, approvals, checkpoints); default ``<cwd>/.cave``."""
STORE_ENV = "CAVE_CHECKPOINTS"
"""Checkpoint store: a directory or an fsspec URL; default ``<session dir>/checkpoints``."""
RESUME_ENV = "CAVE_RESUME"
"""Checkpoint name a new kernel restores at start."""
AUTOCHECKPOINT_ENV = "CAVE_AUTOCHECKPOINT"
"""``0`` turns the checkpoint after each agent turn off."""
AUTOCHECKPOINT_KEEP_ENV = "CAVE_AUTOCHECKPOINT_KEEP"
"""How many automatic checkpoints to keep (default 20)."""
WRITE_TRACKING_ENV = "CAVE_CHECKPOINT_WRITE_TRACKING"
"""``0`` stops checkpoints asking the kernel which large buffers were written (they are hashed)."""
UNATTENDED_ENV = "CAVE_UNATTENDED"
"""``1``: no one can answer approvals (fail the cell at once); ``0``: someone can; unset: guess."""
UNATTENDED_WAIT_ENV = "CAVE_UNATTENDED_WAIT"
"""Seconds an approval waits for `cave approvals` in a run that looks unattended (default 300)."""
VERIFY_EVERY_ENV = "CAVE_CHECKPOINT_VERIFY_EVERY"
"""After every N-th save, re-hash one buffer write tracking vouched for (default 1; 0 never)."""
CONFIG_DIR_ENV = "CAVE_CONFIG_DIR"
"""The user's Cave config directory (checkpoint signing secret, user policy)."""


def session_dir(explicit: str | os.PathLike[str] | None = None,
                workspace: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$CAVE_SESSION_DIR``, else ``<workspace or cwd>/.cave``.

    The kernel and every ``cave`` subcommand resolve it this way, so a terminal in the notebook's
    directory finds the kernel's audit log, approvals and checkpoints.
    """
    if explicit:
        return Path(explicit)
    env = os.environ.get(SESSION_DIR_ENV)
    return Path(env) if env else Path(workspace or Path.cwd()) / ".cave"


def config_dir() -> Path:
    """``$CAVE_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/cave``, else ``~/.config/cave``."""
    explicit = os.environ.get(CONFIG_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cave"
