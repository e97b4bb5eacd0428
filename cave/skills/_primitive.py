"""The ``skills`` primitive: ``skills.activate(name)``, ``skills.read(name, path)``, ``.list()``.

The agent-facing object holds only the session's opaque handle; the work happens in operations
the vault runs (``Security.extend``), which alone see the registry. What activation does:

1. The instructions (the ``SKILL.md`` body) are printed, so they enter the conversation as the
   step's output, once: a second activation prints a one-line note instead.
2. If the skill ships ``injection.py``, its code is loaded only with approval: an approval
   request for ``tool:skill:NAME@SHA`` (the first 16 hex digits of its SHA-256) shows the file's
   path, its full hash, a preview and the capabilities it declares. ``Approve once`` loads it
   now; ``Approve for session`` also remembers the hash; a changed file is a different request
   and asks again. A ``deny tool:...`` rule refuses without asking.
3. On approval the declared capabilities become ``session`` grants (those a ``deny`` covers are
   refused and reported), and the code runs in its own module namespace *as agent code* (under
   the guard); its public names are bound into the agent namespace and described in the
   manifest.

Stated exactly: the declared capabilities are granted to the agent's session, not to the
skill's functions alone (in-process, Cave cannot tell the skill's code from the agent's). A
denied skill keeps its instructions usable; its code is not loaded and nothing is granted.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from typing import Any

from ..security._capabilities import Capability
from ..security._primitives import Env, Files, Human, Net, Shell, _call, _Primitive, _text
from ._registry import SkillRegistry

__all__ = ["Skills", "make_ops"]

MAX_READ_BYTES = 2_000_000
PREVIEW_CHARS = 2000


class Skills(_Primitive):
    """Skills: packaged instructions (and code) you load when a task needs them."""

    __slots__ = ()

    def activate(self, name: str) -> None:
        """Print the skill's instructions and bind the functions its code provides."""
        name = _text(name, "name")
        result = _call(self._handle, "skills.activate", (name,))
        bound: list[str] = []
        if result["code"] is not None:
            source, filename = result["code"]
            module = types.ModuleType(f"cave_skill_{name.replace('-', '_')}")
            module.__file__ = filename
            h = self._handle  # the skill's code reaches the world through the same primitives
            module.__dict__.update(
                fs=Files(h), shell=Shell(h), net=Net(h), env=Env(h), human=Human(h)
            )
            exec(compile(source, filename, "exec"), module.__dict__)  # runs as agent code
            exports = getattr(module, "__all__", None)
            given = {"fs", "shell", "net", "env", "human"}
            names = list(exports) if exports else [
                n for n, v in vars(module).items()
                if not n.startswith("_") and n not in given
                and not isinstance(v, types.ModuleType)
            ]
            values = {n: getattr(module, n) for n in names}
            bound = list(_call(self._handle, "skills.bind", (name, values)))
        print(result["text"])
        if bound:
            print(f"[skill {name}: bound {', '.join(bound)} in your namespace]")
        if result["note"]:
            print(f"[skill {name}: {result['note']}]")

    def read(self, name: str, path: str) -> str:
        """A file the skill ships next to its SKILL.md (a path relative to the skill)."""
        data = _call(self._handle, "skills.read", (_text(name, "name"), _text(path, "path")))
        return str(data)

    def list(self) -> list[tuple[str, str]]:
        """(name, description) of every installed skill."""
        return [tuple(x) for x in _call(self._handle, "skills.list", ())]


def make_ops(registry: SkillRegistry, bind: Callable[[str, Any, str], None]) -> dict[str, Any]:
    """The vault operations behind ``Skills``; ``bind(name, obj, description)`` injects."""

    # Files under the skill roots Cave itself scans (the session directory's skills/, the user's
    # config skills/) are read for the agent; anything else (a path added with `%cave skills
    # add`, or one agent code slipped into the registry object) is an fs.read like any other.
    trusted = tuple(os.path.realpath(root) for root, _ in registry._roots)

    def read_file(ctx: Any, path: str) -> bytes:
        from ..security._events import Check
        from ..security._ops import _denied, _settled

        def run() -> bytes:
            with open(path, "rb") as f:
                return f.read(MAX_READ_BYTES + 1)

        if any(path.startswith(root + os.sep) for root in trusted):
            data: bytes = ctx.run_with({f"fs.read:{path}"}, [], run)
            return data
        cap = Capability("fs.read", path)
        permit = _denied(ctx, "skills.read", Check(cap, f"read {path}", {"path": path}))
        data = _settled(ctx, permit, "skills.read", run, exact={str(cap)})
        return data

    def activate(ctx: Any, name: str) -> dict[str, Any]:
        skill = registry.get(name)
        first = name not in registry.active
        note = ""
        code: tuple[str, str] | None = None
        code_path = skill.code_path
        if code_path is not None:
            path = os.path.realpath(code_path)
            data = read_file(ctx, path)
            import hashlib

            sha = hashlib.sha256(data).hexdigest()
            if registry.approved.get(name) == sha and name in registry.loaded:
                pass  # loaded already, unchanged
            else:
                source = data.decode("utf-8", "replace")
                caps = ", ".join(skill.capabilities) or "none"
                try:
                    ctx.authority.authorize(
                        Capability("tool", f"skill:{name}@{sha[:16]}"),
                        origin="skills.activate",
                        summary=f"load the code of skill {name!r}: {path} (sha256 {sha[:16]}...), "
                        f"granting for this session: {caps}",
                        details={
                            "path": path,
                            "sha256": sha,
                            "capabilities": list(skill.capabilities),
                            "preview": source[:PREVIEW_CHARS],
                        },
                        code_line=ctx.code_line,
                    )
                except PermissionError as exc:
                    note = f"its code was NOT loaded ({exc}); its instructions still apply"
                    ctx.authority.record("skill.denied", skill=name, sha256=sha)
                else:
                    registry.approved[name] = sha
                    refused = ctx.authority.grant_session(
                        [_grant_capability(c, ctx.workspace) for c in skill.capabilities],
                        because=f"skill {name} approved",
                        request_id=None,
                    )
                    if refused:
                        note = f"not granted (a deny rule covers them): {', '.join(refused)}"
                    code = (source, str(path))
                    ctx.authority.record("skill.code", skill=name, sha256=sha, path=path)
        if first:
            registry.active.append(name)
            ctx.authority.record("skill.activate", skill=name, source=skill.source)
            text = f"# Skill: {name}\n\n{skill.body}"
        else:
            text = f"(skill {name} is already active; its instructions are above)"
        return {"text": text, "code": code, "note": note}

    def bind_values(ctx: Any, name: str, values: dict[str, Any]) -> list[str]:
        if name not in registry.approved:
            raise PermissionError(f"skill {name!r} has no approved code to bind")
        bound = []
        for key, value in values.items():
            if isinstance(key, str) and key.isidentifier() and not key.startswith("_"):
                bind(key, value, f"from skill {name}")
                bound.append(key)
        registry.loaded[name] = bound
        return bound

    def read(ctx: Any, name: str, path: str) -> str:
        skill = registry.get(name)
        root = os.path.realpath(skill.path)
        full = os.path.realpath(os.path.join(root, path))
        if full != root and not full.startswith(root + os.sep):
            raise PermissionError(f"skills.read: {path!r} is outside skill {name!r}")
        if not os.path.isfile(full):
            have = sorted(
                os.path.relpath(os.path.join(d, f), root)
                for d, _, files in os.walk(root) for f in files
            )[:50]
            raise FileNotFoundError(f"skill {name!r} has no file {path!r}; it has: {have}")
        data = read_file(ctx, full)
        if len(data) > MAX_READ_BYTES:
            raise ValueError(f"{path} is larger than {MAX_READ_BYTES:,} bytes")
        ctx.authority.record("skill.read", skill=name, path=full, bytes=len(data))
        return data.decode("utf-8", "replace")

    def listing(ctx: Any) -> list[tuple[str, str]]:
        return [(n, registry.skills[n].description) for n in sorted(registry.skills)]

    return {
        "skills.activate": activate,
        "skills.bind": bind_values,
        "skills.read": read,
        "skills.list": listing,
    }


def _grant_capability(text: str, workspace: Any) -> Capability:
    kind, _, resource = text.partition(":")
    if kind.startswith("fs.") and not resource.startswith("/"):
        base = os.path.realpath(os.path.join(str(workspace), resource.removesuffix("/**")))
        resource = base + ("/**" if resource.endswith("/**") else "")
    elif kind.startswith("fs."):
        base = os.path.realpath(resource.removesuffix("/**"))
        resource = base + ("/**" if resource.endswith("/**") else "")
    return Capability(kind, resource)
