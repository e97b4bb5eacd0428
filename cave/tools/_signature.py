"""A tool's Python-facing signature, read from its TypeScript with ``deno doc --json``.

``deno doc`` parses the file offline (``--no-remote --no-npm``, nothing is fetched or run) and
describes ``run``'s parameters as a type tree. The first parameter's object type becomes the
keyword arguments (``tools.parse(rows=..., strict=...)``); anything else is shown as one
``args`` object. Types are rendered back to short TypeScript text for the manifest.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ToolError
from ._flags import deno_env

__all__ = ["Signature", "read_signature", "render_type"]

DOC_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Signature:
    """What ``deno doc`` says about a tool's ``run``."""

    params: str
    """``(rows: Array<Row>, strict?: boolean)``: the keyword arguments, as TypeScript."""
    returns: str
    """``Promise<{ valid: number }>``, or ``unknown``."""
    doc: str
    """The JSDoc of ``run`` (its first paragraph), or empty."""

    def text(self, name: str) -> str:
        return f"{name}{self.params} -> {self.returns}"


def render_type(t: Any, depth: int = 0) -> str:
    """A ``deno doc`` type node as TypeScript text (bounded: deep or odd nodes become ``...``)."""
    if not isinstance(t, dict) or depth > 6:
        return "..."
    kind, value = t.get("kind"), t.get("value")
    if kind == "keyword":
        return str(value)
    if kind == "literal" and isinstance(value, dict):
        if value.get("kind") == "string":
            return json.dumps(value.get("string"))
        for key in ("number", "boolean", "bigint"):
            if key in value:
                return str(value[key]).lower()
    if kind == "typeRef" and isinstance(value, dict):
        params = value.get("typeParams") or []
        inner = ", ".join(render_type(p, depth + 1) for p in params)
        return f"{value.get('typeName')}<{inner}>" if params else str(value.get("typeName"))
    if kind == "array":
        return f"{render_type(value, depth + 1)}[]"
    if kind in ("union", "intersection") and isinstance(value, list):
        sep = " | " if kind == "union" else " & "
        return sep.join(render_type(v, depth + 1) for v in value)
    if kind == "parenthesized":
        return f"({render_type(value, depth + 1)})"
    if kind == "typeLiteral" and isinstance(value, dict):
        props = [_prop(p, depth + 1) for p in value.get("properties") or []]
        return "{ " + "; ".join(props) + " }" if props else "{}"
    if kind == "tuple" and isinstance(value, list):
        return "[" + ", ".join(render_type(v, depth + 1) for v in value) + "]"
    repr_ = t.get("repr")
    return str(repr_) if repr_ else "..."


def _prop(p: Any, depth: int) -> str:
    if not isinstance(p, dict):
        return "..."
    mark = "?" if p.get("optional") else ""
    return f"{p.get('name')}{mark}: {render_type(p.get('tsType'), depth)}"


def _params(first: Any) -> str:
    if not isinstance(first, dict):
        return "()"
    t = first.get("tsType")
    if isinstance(t, dict) and t.get("kind") == "typeLiteral":
        props = (t.get("value") or {}).get("properties") or []
        return "(" + ", ".join(_prop(p, 0) for p in props) + ")"
    if t is None:
        return "(**args)"
    return f"(**args: {render_type(t)})"


def parse_doc(doc: Any) -> Signature:
    """The ``run`` function in ``deno doc --json`` output; ToolError if there is none."""
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    symbols: list[Any] = []
    if isinstance(nodes, dict):
        for node in nodes.values():
            symbols += node.get("symbols") or []
    elif isinstance(doc, list):  # older deno doc: a flat list of declarations
        symbols = [{"name": d.get("name"), "declarations": [d]} for d in doc]
    for symbol in symbols:
        if symbol.get("name") != "run":
            continue
        for decl in symbol.get("declarations") or []:
            if decl.get("kind") != "function":
                continue
            fn = decl.get("def") or decl.get("functionDef") or {}
            params = fn.get("params") or []
            returns = render_type(fn.get("returnType")) if fn.get("returnType") else "unknown"
            text = ((decl.get("jsDoc") or {}).get("doc") or "").strip().split("\n\n")[0]
            first = params[0] if params else None
            return Signature(_params(first), returns, " ".join(text.split()))
    raise ToolError(
        "the tool's source does not export a function named run; write "
        "`export async function run(args: {...}, cave) { ... }`"
    )


def read_signature(deno: str, source_file: Path, deno_dir: Path) -> Signature:
    """Run ``deno doc --json`` on ``source_file`` (offline) and read ``run``'s signature."""
    cmd = [
        deno, "doc", "--json", "--quiet", "--no-remote", "--no-npm", "--no-config", "--no-lock",
        source_file.name,
    ]
    try:
        out = subprocess.run(
            cmd,
            cwd=str(source_file.parent),
            env=deno_env(str(deno_dir)),
            capture_output=True,
            timeout=DOC_TIMEOUT_S,
            close_fds=True,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise ToolError(f"deno doc did not finish within {DOC_TIMEOUT_S:g} s") from None
    if out.returncode != 0:
        message = out.stderr.decode("utf-8", "replace").strip()[-1000:]
        raise ToolError(f"the tool's TypeScript does not parse (deno doc): {message}")
    try:
        return parse_doc(json.loads(out.stdout))
    except ValueError as exc:
        raise ToolError(f"deno doc wrote something that is not JSON: {exc}") from None
