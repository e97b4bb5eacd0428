"""A tool's syscalls: checked against the tool's capabilities, then run as Cave primitives.

For each syscall the broker works out the concrete capability itself (the path resolved with
symlinks followed, the URL's host and port, the program found on PATH), then:

1. **Ceiling.** If the tool was not registered with a capability that covers it, the syscall is
   refused at once: nobody is asked, the audit log gets a ``tool.syscall`` record with the
   tool's name and ``refused: outside the tool's capabilities``.
2. **Policy.** Otherwise the primitive runs exactly as the agent's own call would (same vault,
   policy, grants, approvals, ``primitive`` audit record); the approval request names the tool.
   A ``tool.syscall`` record with the tool's name and the outcome follows.

A resolved path is what is checked and what is handed to the primitive, so a symlink inside an
allowed directory that points outside it is judged by where it points. What remains: a symlink
swapped between this check and the primitive's open (the primitive resolves and checks the
path again against the session policy, but not against the tool's ceiling).
"""

from __future__ import annotations

import base64
import os
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..security._capabilities import Capability
from ..security._events import resolve_path, shell_program
from ..security._policy import Effect, Policy, Rule
from ..security._primitives import call_on_behalf

__all__ = ["SyscallError", "ceiling_policy", "run_syscall"]


class SyscallError(Exception):
    """A syscall that failed; ``name`` becomes the JavaScript error's name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def ceiling_policy(name: str, capabilities: tuple[str, ...], workspace: Path) -> Policy:
    """Allow exactly ``capabilities``, deny the rest; ValueError names a bad capability."""
    rules = []
    for text in capabilities:
        try:
            rules.append(Rule(text, Effect.ALLOW, f"tool {name}"))
        except ValueError as exc:
            raise ValueError(f"capability {text!r}: {exc}") from None
    return Policy(workspace, tuple(rules), Effect.DENY)


def _str(args: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = args.get(key)
    if value is None and optional:
        return None
    if type(value) is not str or not value or "\0" in value:
        raise SyscallError("TypeError", f"{key} must be a non-empty string")
    return value


def _real(workspace: Path, path: str) -> str:
    if not os.path.isabs(path):
        path = os.path.join(str(workspace), path)
    real = resolve_path(path)
    assert real is not None
    return real


def _target(op: str, args: Mapping[str, Any], workspace: Path) -> tuple[Capability | None, Any]:
    """(capability to check against the ceiling, the primitive's argument tuple)."""
    if op in ("fs.read", "fs.list"):
        real = _real(workspace, _str(args, "path"))
        read: tuple[Any, ...] = (real, bool(args.get("binary"))) if op == "fs.read" else (real,)
        return Capability("fs.read", real), read
    if op == "fs.write":
        real = _real(workspace, _str(args, "path"))
        if type(args.get("text")) is str:
            data, is_text = args["text"].encode("utf-8"), True
        elif type(args.get("b64")) is str:
            data, is_text = base64.b64decode(args["b64"], validate=True), False
        else:
            raise SyscallError("TypeError", "fs.write takes a string or a Uint8Array")
        return Capability("fs.write", real), (real, data, bool(args.get("append")), is_text)
    if op == "shell.run":
        argv = args.get("argv")
        if not isinstance(argv, list) or not argv or not all(type(a) is str for a in argv):
            raise SyscallError("TypeError", "shell.run takes argv as a non-empty array of strings")
        cwd = _str(args, "cwd", optional=True)
        workdir = _real(workspace, cwd) if cwd is not None else str(workspace)
        program = shell_program(argv[0], workdir)
        timeout = float(args.get("timeout") or 60)
        stdin = args.get("input")
        if stdin is not None and type(stdin) is not str:
            raise SyscallError("TypeError", "shell.run input must be a string")
        return Capability("shell", program), (tuple(argv), workdir, timeout, stdin)
    if op == "net.fetch":
        url = _str(args, "url")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SyscallError("TypeError", f"cave.net.fetch takes http(s) URLs, not {url!r}")
        host = parts.hostname.lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise SyscallError("TypeError", f"bad port in {url!r}") from None
        shown = f"[{host}]" if ":" in host else host
        method = str(args.get("method") or "GET").upper()
        headers = args.get("headers") or {}
        if not isinstance(headers, dict):
            raise SyscallError("TypeError", "headers must be an object of strings")
        hdrs = tuple((str(k), str(v)) for k, v in headers.items())
        if args.get("json"):
            hdrs += (("Content-Type", "application/json"),)
        body = args.get("body")
        data = body.encode("utf-8") if type(body) is str else None
        timeout = float(args.get("timeout") or 30)
        max_bytes = int(args.get("max_bytes") or 20_000_000)
        return Capability("net", f"{shown}:{port}"), (url, method, hdrs, data, timeout, max_bytes)
    if op == "env.get":
        name = _str(args, "name")
        return Capability("env", name), (name,)
    if op == "human.ask":
        question = _str(args, "question")
        wait = args.get("timeout")
        return None, (question, None if wait is None else float(wait))
    raise SyscallError("TypeError", f"unknown syscall {op!r}")


_PRIMITIVE_OF = {
    "fs.read": "fs",
    "fs.list": "fs",
    "fs.write": "fs",
    "shell.run": "shell",
    "net.fetch": "net",
    "env.get": "env",
    "human.ask": "human",
}


def _shape(op: str, value: Any) -> Any:
    """The primitive's result as JSON for the worker (bytes as base64 or text)."""
    if op == "fs.read":
        data, binary = value
        if binary:
            return base64.b64encode(data).decode("ascii")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise SyscallError(
                "TypeError", "the file is not UTF-8 text; read it with {binary: true}"
            ) from None
    if op == "net.fetch":
        return {
            "url": value["url"],
            "status": value["status"],
            "headers": value["headers"],
            "truncated": value["truncated"],
            "b64": base64.b64encode(value["content"]).decode("ascii"),
        }
    return value


def run_syscall(
    tool: str,
    ceiling: Policy,
    primitives: Mapping[str, Any],
    workspace: Path,
    record: Callable[..., None],
    op: str,
    args: Any,
) -> Any:
    """Check and run one syscall of ``tool``; its JSON result, or SyscallError saying why not."""
    if not isinstance(args, dict):
        raise SyscallError("TypeError", f"{op}: arguments must be an object")
    try:
        capability, call = _target(op, args, workspace)
    except (TypeError, ValueError) as exc:
        raise SyscallError("TypeError", f"{op}: {exc}") from None
    shown = str(capability) if capability is not None else op
    if capability is not None and ceiling.decide(capability).effect is not Effect.ALLOW:
        why = "refused: outside the tool's capabilities (nobody was asked)"
        record("tool.syscall", tool=tool, op=op, capability=shown, ok=False, error=why)
        raise SyscallError(
            "PermissionError",
            f"cave.{op}: {capability} is outside the capabilities tool {tool!r} was registered "
            "with, so it was refused without asking; register the tool again with that "
            "capability if it needs it",
        )
    primitive = primitives[_PRIMITIVE_OF[op]]
    who = f"tool {tool}: cave.{op} {shown}"
    try:
        value = call_on_behalf(primitive, op, call, who)
    except PermissionError as exc:
        record("tool.syscall", tool=tool, op=op, capability=shown, ok=False, error=str(exc)[:500])
        raise SyscallError("PermissionError", str(exc)) from None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        record("tool.syscall", tool=tool, op=op, capability=shown, ok=False, error=error[:500])
        raise SyscallError(type(exc).__name__, str(exc)) from None
    record("tool.syscall", tool=tool, op=op, capability=shown, ok=True)
    if op == "fs.read":
        value = (value, bool(call[1]))
    return _shape(op, value)
