"""The agent's API to the world: ``fs``, ``shell``, ``net``, ``env``, ``human``.

These objects hold nothing but an opaque session handle. Each method turns its arguments into
plain builtins (so that no agent-defined ``__fspath__`` or ``__str__`` runs inside the vault),
then hands the call to the vault, which checks the policy, maybe asks a person, runs the
operation, and audits it. A denial raises ``PermissionError`` with the reason.

Relative paths are relative to the workspace, not to the process's working directory.
"""

from __future__ import annotations

import inspect
import json as _json
import linecache
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import AuthorityError

__all__ = ["Env", "Files", "Human", "Net", "Response", "Shell", "describe"]

_EVENT = "cave.security"


def _call(handle: object, op: str, args: tuple[Any, ...], _audit: Any = sys.audit) -> Any:
    box: list[Any] = []
    _audit(_EVENT, "call", (handle, op, args, _code_line()), box)
    if not box:
        raise AuthorityError(
            f"{op}: Cave's guard did not answer, so nothing was done. The security layer is not "
            "installed in this process (or sys.audit was replaced); restart the kernel."
        )
    return box[0]


def _code_line() -> str | None:
    """The agent's line that called the primitive, for the approver (display only)."""
    try:
        frame = sys._getframe(3)  # _code_line <- _call <- the primitive method <- its caller
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    except (ValueError, PermissionError):
        return None
    return line[:500] or None


def _text(value: Any, what: str) -> str:
    """An exact ``str`` (a str subclass is copied; its methods will not run in the vault)."""
    if type(value) is str:
        return value
    if isinstance(value, str):
        return "".join([value])
    raise TypeError(f"{what} must be a str, not {type(value).__name__}")


def _pathname(path: Any) -> str:
    value = os.fspath(path)
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    text = _text(value, "path")
    if not text or "\0" in text:
        raise ValueError("path must be a non-empty string without NUL characters")
    return text


class _Primitive:
    __slots__ = ("_handle",)

    def __init__(self, handle: object) -> None:
        self._handle = handle

    def __repr__(self) -> str:
        name = type(self).__name__.lower()
        return f"<cave primitive {name}: {describe_one(self, name)}>"


class Files(_Primitive):
    """Files, checked against the session policy (relative paths are in the workspace)."""

    __slots__ = ()

    def read(
        self, path: str | os.PathLike[str], *, binary: bool = False, encoding: str = "utf-8"
    ) -> str | bytes:
        """Read a whole file: text (str) by default, bytes with binary=True."""
        data = _call(self._handle, "fs.read", (_pathname(path), bool(binary)))
        return data if binary else data.decode(_text(encoding, "encoding"))

    def write(
        self,
        path: str | os.PathLike[str],
        data: str | bytes,
        *,
        append: bool = False,
        encoding: str = "utf-8",
    ) -> int:
        """Write (or append) str or bytes to a file; returns the number of bytes written."""
        if isinstance(data, str):
            raw, is_text = _text(data, "data").encode(_text(encoding, "encoding")), True
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw, is_text = bytes(memoryview(data)), False
        else:
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        return int(_call(self._handle, "fs.write", (_pathname(path), raw, bool(append), is_text)))

    def list(self, path: str | os.PathLike[str] = ".") -> list[str]:
        """Names in a directory, sorted; sub-directories end with '/'."""
        return list(_call(self._handle, "fs.list", (_pathname(path),)))

    def delete(self, path: str | os.PathLike[str], *, recursive: bool = False) -> None:
        """Delete a file or an empty directory (a directory tree with recursive=True)."""
        _call(self._handle, "fs.delete", (_pathname(path), bool(recursive)))


class Shell(_Primitive):
    """Programs, run without a shell: pass argv as a list, never a command string."""

    __slots__ = ()

    def run(
        self,
        argv: list[str],
        cwd: str | None = None,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a program and wait; returns CompletedProcess (returncode, stdout, stderr as str)."""
        if isinstance(argv, (str, bytes)):
            raise TypeError(
                "shell.run takes argv as a list, e.g. ['git', 'status'], not a command string"
            )
        args = tuple(_text(os.fsdecode(os.fspath(a)), "argv item") for a in argv)
        where = None if cwd is None else _pathname(cwd)
        stdin = None if input is None else _text(input, "input")
        result = _call(self._handle, "shell.run", (args, where, float(timeout), stdin))
        return subprocess.CompletedProcess(
            result["args"], result["returncode"], result["stdout"], result["stderr"]
        )


@dataclass(frozen=True)
class Response:
    """What ``net.fetch`` returns."""

    url: str
    """The final URL, after redirects."""
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    truncated: bool = False
    """True when the body was longer than max_bytes and was cut."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return _json.loads(self.content)


class Net(_Primitive):
    """HTTP(S), checked per host and port; no proxies; redirects to other hosts are checked too."""

    __slots__ = ()

    def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        data: bytes | str | None = None,
        json: Any = None,
        timeout: float = 30.0,
        max_bytes: int = 20_000_000,
    ) -> Response:
        """Fetch a URL; returns Response(url, status, headers, content) with .text and .json()."""
        hdrs = tuple(
            (_text(str(k), "header"), _text(str(v), "header")) for k, v in (headers or {}).items()
        )
        body: bytes | None
        if json is not None:
            body = _json.dumps(json).encode()
            hdrs += (("Content-Type", "application/json"),)
        elif isinstance(data, str):
            body = _text(data, "data").encode()
        elif data is not None:
            body = bytes(memoryview(data))
        else:
            body = None
        args = (
            _text(url, "url"),
            _text(method, "method").upper(),
            hdrs,
            body,
            float(timeout),
            int(max_bytes),
        )
        result = _call(self._handle, "net.fetch", args)
        return Response(**result)


class Env(_Primitive):
    """Environment variables, each checked as env:NAME."""

    __slots__ = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of an environment variable, or default when it is not set."""
        value = _call(self._handle, "env.get", (_text(name, "name"),))
        return default if value is None else str(value)


class Human(_Primitive):
    """The person at the notebook."""

    __slots__ = ()

    def ask(self, question: str, *, timeout: float | None = None) -> str:
        """Ask the user a question and wait for their answer (a str); with ``timeout`` seconds,
        PermissionError if nobody answers by then."""
        wait = None
        if timeout is not None:
            wait = float(timeout)
            if not math.isfinite(wait) or wait <= 0:
                raise ValueError(
                    f"human.ask timeout must be a positive number of seconds, not {timeout!r}"
                )
        return str(_call(self._handle, "human.ask", (_text(question, "question"), wait)))


def _signature(fn: Any) -> str:
    """``(path, *, binary=False) -> str | bytes``: names and defaults, the return type."""
    sig = inspect.signature(fn)
    params = []
    star = False
    for p in list(sig.parameters.values())[1:]:
        if p.kind is p.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        params.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    ret = sig.return_annotation
    ret_text = "" if ret is sig.empty else f" -> {ret if isinstance(ret, str) else ret.__name__}"
    return f"({', '.join(params)}){ret_text}"


def describe_one(obj: _Primitive, name: str) -> str:
    methods = [m for m in type(obj).__dict__ if not m.startswith("_") and callable(getattr(obj, m))]
    return ", ".join(f"{name}.{m}" for m in methods)


def describe(primitives: Mapping[str, _Primitive]) -> str:
    """Signatures and first doc lines, for the system prompt."""
    lines = []
    for name, obj in primitives.items():
        doc = (type(obj).__doc__ or "").strip().splitlines()[0]
        lines.append(f"{name}: {doc}")
        for attr, fn in type(obj).__dict__.items():
            if attr.startswith("_") or not callable(fn):
                continue
            sig = _signature(fn)
            first = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
            lines.append(f"  {name}.{attr}{sig}\n      {first}")
    lines.append(
        "Each raises PermissionError with the reason when the policy or a person says no; "
        "do not retry a denial, explain what you needed instead."
    )
    return "\n".join(lines)


def call_on_behalf(primitive: _Primitive, op: str, args: tuple[Any, ...], who: str) -> Any:
    """Run primitive ``op`` for Cave code acting for someone else (a Deno tool's syscall).

    Same vault, policy, approvals and audit as the agent's own call; ``who`` replaces the agent's
    code line in the approval request (``tool parse_records: fs.read data/x.csv``). ``args`` must
    already be plain builtins in the op's order (see ``_ops``).
    """
    box: list[Any] = []
    sys.audit(_EVENT, "call", (primitive._handle, op, args, who[:500]), box)
    if not box:
        raise AuthorityError(
            f"{op}: Cave's guard did not answer, so nothing was done; restart the kernel."
        )
    return box[0]
