"""Context windows of known models, in tokens; the compaction budget is derived from them.

Overridable per session (``c.CaveKernel.context_window``, ``cave.toml``). A model we do not know
gets ``DEFAULT_WINDOW``, a conservative size that today's hosted and most local models exceed.
"""

from __future__ import annotations

DEFAULT_WINDOW = 128_000
WINDOWS: tuple[tuple[str, int], ...] = (
    ("claude-", 200_000),
    ("gpt-4.1", 1_000_000),
    ("gpt-4o", 128_000),
    ("gpt-5", 400_000),
    ("o3", 200_000),
    ("o4", 200_000),
    ("qwen", 32_768),
    ("llama3", 8_192),
)
"""Name prefixes (after any ``openai:`` provider prefix) and their windows; first match wins."""


def context_window(model: str) -> int:
    name = model.split(":", 1)[1] if model.startswith(("openai:", "openai-fenced:")) else model
    for prefix, window in WINDOWS:
        if name.startswith(prefix):
            return window
    return DEFAULT_WINDOW
