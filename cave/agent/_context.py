"""Build what the model sees: system prompt, manifest, primitives, history.

The prompt is ordered from most to least stable so the provider's prompt cache keeps the prefix:
rules and primitives (change never), the manifest of injected objects (changes on inject), then the
conversation. Values never enter the prompt; only the manifest's bounded descriptions do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..models._protocol import PYTHON_TOOL, ModelRequest

RULES = """\
You operate a live, persistent Python runtime in the user's Jupyter notebook.
- Act by calling the `python` tool. Variables, imports and functions persist between calls and \
turns: build on them instead of recomputing.
- Objects under "Objects in your namespace" are live objects bound to those names: use them \
directly, never ask for their data.
- You see only what your code prints (and a final bare expression's value); long output is cut \
to its head and tail, so print summaries.
- Never invent results: compute them or say you cannot.
- Leave results as named variables and mention their names.
- When done, answer in plain text (Markdown), without calling the tool.{primitives}"""
"""Kept short on purpose: it rides on every request (benchmarks/bench_context_economy.py)."""

NO_PRIMITIVES = ""

CACHE = {"type": "ephemeral"}
TOOLS = (PYTHON_TOOL,)
_SIGNATURE = re.compile(r"^  (\w+\.\w+)\((.*?)\)(?: ->.*)?$")


PRIMITIVE_USES = {"fs": "files", "shell": "programs", "net": "network", "env": "environment "
                  "variables", "human": "asking the user", "skills": "skills", "agents":
                  "sub-agents", "tools": "TypeScript tools"}
"""What each primitive object is for, in the one line every request carries."""


def brief_primitives(doc: str) -> str:
    """The primitives as one short line: each object's name and what it is for.

    The full documentation (about 1,900 characters) would ride on every request, and so would a
    list of every call's signature (about 480); the model needs to know that effects go through
    these objects and which one to use, and reads a call's signature with ``help()`` when it needs
    one, which is rare in data work."""
    names: list[str] = []
    for line in doc.splitlines():
        match = _SIGNATURE.match(line)
        if match is not None and (name := match.group(1).split(".")[0]) not in names:
            names.append(name)
    if not names:
        return doc.rstrip()
    return ", ".join(f"`{n}` ({PRIMITIVE_USES[n]})" if n in PRIMITIVE_USES else f"`{n}`"
                     for n in names)


def system_blocks(
    primitives_doc: str, manifest: str, *, skills: str = "", instructions: str = ""
) -> list[dict[str, Any]]:
    """The system prompt as two cacheable blocks: the fixed rules, then the manifest.

    ``skills`` (the bounded listing of skill names and descriptions) and ``instructions`` (a
    sub-agent's role) belong to the first block: they change only when skills are added."""
    primitives = ""
    if primitives_doc.strip():
        primitives = (
            f"\nEffects go through these objects in your namespace: "
            f"{brief_primitives(primitives_doc)}; `help(fs)` etc. show their calls. A refusal "
            "raises PermissionError: report it, do not retry or work around it."
        )
    fixed = RULES.format(primitives=primitives)
    if skills.strip():
        fixed += "\n\n" + skills.strip()
    if instructions.strip():
        fixed += "\n\nYour role (from the agent that created you):\n" + instructions.strip()
    blocks: list[dict[str, Any]] = [{"type": "text", "text": fixed, "cache_control": CACHE}]
    blocks.append({"type": "text", "text": manifest.strip(), "cache_control": CACHE})
    return blocks


SHOWN_VARIABLES = 50
"""The newest agent variables named in each new turn's prompt (with their types); the loop asks
the runtime for one more, to know whether older ones exist."""


def user_prompt(prompt: str, agent_variables: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The user's message for a new turn, with a short note of what the runtime already holds."""
    blocks: list[dict[str, Any]] = []
    if agent_variables:
        shown = ", ".join(f"{n}: {t}" for n, t in agent_variables[-SHOWN_VARIABLES:])
        if len(agent_variables) > SHOWN_VARIABLES:
            shown = "(older ones not listed: `dir()` shows all) ... " + shown
        blocks.append({"type": "text", "text": f"[Runtime state] Your variables: {shown}"})
    blocks.append({"type": "text", "text": prompt})
    return blocks


def build_request(
    *,
    system: Sequence[dict[str, Any]],
    history: Sequence[dict[str, Any]],
    max_tokens: int,
) -> ModelRequest:
    """A request whose last message carries a cache breakpoint, so each step reuses the last."""
    messages = list(history)
    if messages:
        last = dict(messages[-1])
        content = [dict(b) for b in last["content"]]
        content[-1]["cache_control"] = CACHE
        last["content"] = content
        messages[-1] = last
    return ModelRequest(
        system=system, messages=messages, tools=(PYTHON_TOOL,), max_tokens=max_tokens
    )
