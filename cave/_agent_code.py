"""How agent code is recognised in a stack: the file name the executor compiles each step under.

Shared by the runtime (which names the steps) and approvals (which shows the line that asked), so
neither imports the other.
"""

from __future__ import annotations

__all__ = ["AGENT_FILENAME_PREFIX", "is_agent_filename"]

AGENT_FILENAME_PREFIX = "<cave-"
"""Steps compile as ``<cave-LABEL-N>``; tracebacks and the approval widget look for it."""


def is_agent_filename(filename: str) -> bool:
    return filename.startswith(AGENT_FILENAME_PREFIX)
