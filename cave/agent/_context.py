"""Build what the model sees: system prompt, manifest, primitives, history.

The prompt is ordered from most to least stable so the provider's prompt cache keeps the prefix:
rules and primitives (change never), the manifest of injected objects (changes on inject), then the
conversation. Values never enter the prompt; only the manifest's bounded descriptions do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models._protocol import PYTHON_TOOL, ModelRequest

RULES = """\
You operate a live, persistent Python runtime inside the user's Jupyter notebook.

How to work:
- Act by calling the `python` tool with code. Variables, imports and functions you define persist \
between calls and between turns: build on them instead of recomputing.
- The objects listed under "Objects in your namespace" are live Python objects bound in your \
namespace under those names. Use them directly; never ask for their data to be pasted.
- You see only what your code prints (and the value of a final bare expression). Print what you \
need, in summary form: long outputs are cut to their head and tail.
- Never invent results. If you have not computed something, compute it or say you cannot.
- Leave results the user may want as named variables, and mention their names.
- When you are done, answer in plain text (Markdown is rendered), without calling the tool.
{primitives}"""

NO_PRIMITIVES = ""

CACHE = {"type": "ephemeral"}
TOOLS = (PYTHON_TOOL,)


def system_blocks(primitives_doc: str, manifest: str) -> list[dict[str, Any]]:
    """The system prompt as two cacheable blocks: the fixed rules, then the manifest."""
    primitives = ""
    if primitives_doc.strip():
        primitives = (
            "\nEffects on the world (files, processes, network, environment, asking the user) go "
            "through these primitives, already in your namespace. A denied request raises "
            "PermissionError: report it, do not try to work around it.\n" + primitives_doc.rstrip()
        )
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": RULES.format(primitives=primitives), "cache_control": CACHE}
    ]
    blocks.append({"type": "text", "text": manifest.strip(), "cache_control": CACHE})
    return blocks


def user_prompt(prompt: str, agent_variables: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The user's message for a new turn, with a short note of what the runtime already holds."""
    blocks: list[dict[str, Any]] = []
    if agent_variables:
        shown = ", ".join(f"{n}: {t}" for n, t in agent_variables[:50])
        more = len(agent_variables) - 50
        if more > 0:
            shown += f", ... (+{more} more)"
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
