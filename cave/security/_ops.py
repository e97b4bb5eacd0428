"""What the primitives do, run inside the vault: check -> maybe ask -> run -> audit.

Each operation gets its arguments as plain builtins (the agent-facing wrappers in
``_primitives`` convert them *before* entering the vault, so no agent code runs here), asks the
session for a permit, runs with a ticket that lets exactly its own raw events through, settles the
permit (a once grant is consumed only on success) and writes one ``primitive`` audit record.
Results are plain builtins too; the wrappers dress them up.
"""

from __future__ import annotations

import hashlib
import json as _json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._capabilities import Capability
from ._events import Check, resolve_path, shell_program

if TYPE_CHECKING:
    from pathlib import Path

    from ._engine import Permit

__all__ = ["OpContext", "run_op"]


class OpContext(Protocol):
    """What an operation may do on the guard's behalf (``_opcontext._OpContext`` is one).

    A protocol here, so the operations do not import the guard that calls them.
    """

    authority: Any
    workspace: Path

    def permit(self, check: Check, origin: str) -> Permit: ...
    def run_with(
        self, exact: set[str], trees: list[tuple[str, str]], fn: Callable[[], Any]
    ) -> Any: ...
    def resolve_host(self, host: str, port: int) -> list[str]: ...
    def spawned(self, pid: int) -> None: ...

MAX_OUTPUT_CHARS = 1_000_000
"""``shell.run`` keeps at most this much of stdout and of stderr (the rest is cut, with a note)."""
MAX_FETCH_BYTES = 20_000_000


def run_op(ctx: OpContext, op: str, args: tuple[Any, ...]) -> Any:
    fn = _OPS.get(op)
    if fn is None:
        raise ValueError(f"unknown primitive {op!r}")
    return fn(ctx, *args)


def _path(ctx: OpContext, path: str, *, follow: bool = True) -> str:
    if not isinstance(path, str) or not path:
        raise TypeError("path must be a non-empty str")
    if not os.path.isabs(path):
        path = os.path.join(str(ctx.workspace), path)
    real = resolve_path(path, follow=follow)
    assert real is not None
    return real


def _settled(
    ctx: OpContext,
    permit: Permit,
    op: str,
    run: Callable[[], Any],
    *,
    exact: set[str],
    trees: list[tuple[str, str]] | None = None,
    fields: Callable[[Any], dict[str, Any]] | None = None,
) -> Any:
    ok = False
    result: Any = None
    error: str | None = None
    try:
        result = ctx.run_with(exact, trees or [], run)
        ok = True
        return result
    except BaseException as exc:  # noqa: B036 - recorded, then re-raised
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        ctx.authority.settle(permit, ok=ok)
        record: dict[str, Any] = {
            "op": op,
            "capability": str(permit.capability),
            "via": permit.via,
            "reason": permit.reason,
            "ok": ok,
        }
        if error is not None:
            record["error"] = error[:500]
        if ok and fields is not None:
            record.update(fields(result))
        ctx.authority.record("primitive", **record)


def _denied(ctx: OpContext, op: str, check: Check) -> Permit:
    try:
        return ctx.permit(check, op)
    except PermissionError as exc:
        ctx.authority.record(
            "primitive", op=op, capability=str(check.capability), ok=False, error=str(exc)[:500]
        )
        raise


# -- fs ------------------------------------------------------------------------------------
def fs_read(ctx: OpContext, path: str, binary: bool) -> bytes:
    real = _path(ctx, path)
    cap = Capability("fs.read", real)
    permit = _denied(ctx, "fs.read", Check(cap, f"read {real}", {"path": real}))

    def run() -> bytes:
        with open(real, "rb") as f:
            return f.read()

    return _settled(
        ctx, permit, "fs.read", run, exact={str(cap)}, fields=lambda d: {"bytes": len(d)}
    )


def fs_write(ctx: OpContext, path: str, data: bytes, append: bool, is_text: bool) -> int:
    real = _path(ctx, path)
    cap = Capability("fs.write", real)
    digest = hashlib.sha256(data).hexdigest()
    verb = "append" if append else "write"
    details: dict[str, Any] = {"path": real, "bytes": len(data), "sha256": digest}
    if is_text:
        details["preview"] = data[:2000].decode("utf-8", "replace")
    else:
        details["preview"] = f"(binary) {data[:48].hex(' ')}"
    if os.path.exists(real):
        details["replaces"] = f"an existing file of {os.path.getsize(real):,} bytes"
    summary = f"{verb} {len(data):,} bytes to {real}"
    permit = _denied(ctx, "fs.write", Check(cap, summary, details))

    def run() -> int:
        with open(real, "ab" if append else "wb") as f:
            f.write(data)
        return len(data)

    return _settled(
        ctx,
        permit,
        "fs.write",
        run,
        exact={str(cap)},
        fields=lambda n: {"bytes": n, "sha256": digest, "append": append},
    )


def fs_list(ctx: OpContext, path: str) -> list[str]:
    real = _path(ctx, path)
    cap = Capability("fs.read", real)
    permit = _denied(ctx, "fs.list", Check(cap, f"list {real}", {"path": real}))

    def run() -> list[str]:
        names = []
        for name in sorted(os.listdir(real)):
            full = os.path.join(real, name)
            names.append(name + "/" if os.path.isdir(full) and not os.path.islink(full) else name)
        return names

    return _settled(
        ctx, permit, "fs.list", run, exact={str(cap)}, fields=lambda n: {"entries": len(n)}
    )


def fs_delete(ctx: OpContext, path: str, recursive: bool) -> None:
    real = _path(ctx, path, follow=False)
    is_dir = os.path.isdir(real) and not os.path.islink(real)
    cap = Capability("fs.delete", real)
    if is_dir and recursive:
        summary = f"delete {real} and everything in it"
        check = Check(cap, summary, {"path": real, "recursive": True}, grant_as=f"{cap}/**")
    else:
        check = Check(cap, f"delete {real}", {"path": real})
    permit = _denied(ctx, "fs.delete", check)
    if is_dir and recursive:
        # Check every path below for deny rules and protected paths before deleting anything.
        for root, dirs, files in ctx.run_with(
            set(), [("fs.read", real)], lambda: list(os.walk(real))
        ):
            for name in dirs + files:
                inner = Capability("fs.delete", os.path.join(root, name))
                if ctx.authority.is_denied(inner):
                    ctx.authority.settle(permit, ok=False)
                    raise PermissionError(
                        f"fs.delete: {inner} is denied (a deny rule or a protected path), so "
                        f"nothing under {real} was deleted"
                    )

        def run() -> None:
            shutil.rmtree(real)

        trees = [("fs.read", real), ("fs.delete", real), ("fs.write", real)]
        _settled(ctx, permit, "fs.delete", run, exact={str(cap)}, trees=trees)
        return

    def run_one() -> None:
        if is_dir:
            os.rmdir(real)
        else:
            os.remove(real)

    _settled(ctx, permit, "fs.delete", run_one, exact={str(cap)})


# -- shell ---------------------------------------------------------------------------------
def shell_run(
    ctx: OpContext, argv: tuple[str, ...], cwd: str | None, timeout: float, stdin: str | None
) -> dict[str, Any]:
    if not argv:
        raise ValueError("argv is empty: pass the program and its arguments as a list")
    workdir = _path(ctx, cwd) if cwd is not None else str(ctx.workspace)
    program = shell_program(argv[0], workdir)
    cap = Capability("shell", program)
    details = {"argv": list(argv), "cwd": workdir, "program": program, "timeout_s": timeout}
    summary = f"run {' '.join(argv)} (in {workdir})"
    permit = _denied(ctx, "shell.run", Check(cap, summary, details))

    def run() -> dict[str, Any]:
        start = time.monotonic()
        proc = subprocess.Popen(
            list(argv),
            cwd=workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: a timeout kills the whole group
        )
        ctx.spawned(proc.pid)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise TimeoutError(
                f"{argv[0]} did not finish within {timeout:g} s and was killed (with its "
                "process group); pass a larger timeout= if it needs longer"
            ) from None
        except BaseException:
            _kill_group(proc)
            raise
        return {
            "args": list(argv),
            "returncode": proc.returncode,
            "stdout": _cut(out),
            "stderr": _cut(err),
            "duration_s": round(time.monotonic() - start, 3),
        }

    return _settled(
        ctx,
        permit,
        "shell.run",
        run,
        exact={str(cap)},
        fields=lambda r: {"returncode": r["returncode"], "argv": list(argv)},
    )


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.communicate(timeout=5)
    except Exception:
        pass


def _cut(text: str | None) -> str:
    text = text or ""
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    cut = len(text) - MAX_OUTPUT_CHARS
    half = MAX_OUTPUT_CHARS // 2
    return f"{text[:half]}\n[... {cut:,} characters cut ...]\n{text[-half:]}"


# -- net -----------------------------------------------------------------------------------
def net_fetch(
    ctx: OpContext,
    url: str,
    method: str,
    headers: tuple[tuple[str, str], ...],
    data: bytes | None,
    timeout: float,
    max_bytes: int,
) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"net.fetch takes http:// or https:// URLs, not {url!r} (use fs.read for files)"
        )
    host = parts.hostname.lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    cap = Capability("net", f"{shown}:{port}")
    details: dict[str, Any] = {"url": url, "method": method, "host": f"{shown}:{port}"}
    if data is not None:
        details["bytes"] = len(data)
        details["body_preview"] = data[:2000].decode("utf-8", "replace")
    permit = _denied(ctx, "net.fetch", Check(cap, f"{method} {url}", details))

    def run() -> dict[str, Any]:
        ips = ctx.resolve_host(host, port)
        exact = {str(cap)} | {f"net:{f'[{ip}]' if ':' in ip else ip}:{port}" for ip in ips}
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(url, data=data, method=method, headers=dict(headers))

        def go() -> dict[str, Any]:
            try:
                response = opener.open(request, timeout=timeout)
            except urllib.error.HTTPError as exc:
                response = exc
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, PermissionError):  # the guard, e.g. on a redirect
                    raise PermissionError(*exc.reason.args) from None
                raise
            with response:
                body = response.read(max_bytes + 1)
                return {
                    "url": response.geturl(),
                    "status": int(response.status),
                    "headers": {k: v for k, v in response.headers.items()},
                    "content": body[:max_bytes],
                    "truncated": len(body) > max_bytes,
                }

        return ctx.run_with(exact, [], go)

    return _settled(
        ctx,
        permit,
        "net.fetch",
        run,
        exact={str(cap)},
        fields=lambda r: {"status": r["status"], "bytes": len(r["content"]), "url": url},
    )


# -- env, human ----------------------------------------------------------------------------
def env_get(ctx: OpContext, name: str) -> str | None:
    if not isinstance(name, str) or not name:
        raise TypeError("name must be a non-empty str")
    cap = Capability("env", name)
    if os.environ.get(name) is None:  # not set: no secret to protect, nobody is asked
        ctx.authority.record("primitive", op="env.get", capability=str(cap), ok=True, present=False)
        return None
    permit = _denied(
        ctx, "env.get", Check(cap, f"read environment variable {name}", {"name": name})
    )
    return _settled(
        ctx,
        permit,
        "env.get",
        lambda: os.environ.get(name),
        exact={str(cap)},
        fields=lambda v: {"present": v is not None},
    )


def human_ask(ctx: OpContext, question: str, timeout: float | None = None) -> str:
    return ctx.authority.ask_human(question, timeout=timeout)


# -- tools ---------------------------------------------------------------------------------
def tool_digest(name: str, source: str, capabilities: tuple[str, ...], description: str) -> str:
    """What an approval of a tool's registration covers: name, source, capabilities, text."""
    blob = _json.dumps([name, source, list(capabilities), description], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def tool_register(
    ctx: OpContext, name: str, source: str, capabilities: tuple[str, ...], description: str
) -> str:
    """Approve registering a Deno tool (``tool:NAME``); returns the digest that was approved.

    The request shows exactly what is hashed (the full source, the capabilities), so what a
    person approves cannot differ from what gets registered. The grant is for that digest only
    (``tool:NAME@<digest>``): approving "for this session" never covers a different source.
    """
    if not all(isinstance(x, str) for x in (name, source, description, *capabilities)):
        raise TypeError("tools.register takes str name, source, description and capabilities")
    digest = tool_digest(name, source, capabilities, description)
    cap = Capability("tool", name)
    details: dict[str, Any] = {
        "name": name,
        "capabilities": ", ".join(capabilities) or "(none: it can only compute)",
        "description": description,
        "bytes": len(source.encode("utf-8")),
        "sha256": digest,
        "source": source,
        "language": "typescript",
    }
    summary = f"register the TypeScript tool {name!r} ({len(source.splitlines())} lines)"
    check = Check(cap, summary, details, grant_as=f"tool:{name}@{digest[:16]}")
    permit = _denied(ctx, "tools.register", check)
    return _settled(
        ctx,
        permit,
        "tools.register",
        lambda: digest,
        exact=set(),
        fields=lambda d: {"sha256": d, "capabilities": list(capabilities)},
    )


_OPS: dict[str, Callable[..., Any]] = {
    "fs.read": fs_read,
    "fs.write": fs_write,
    "fs.list": fs_list,
    "fs.delete": fs_delete,
    "shell.run": shell_run,
    "net.fetch": net_fetch,
    "env.get": env_get,
    "human.ask": human_ask,
    "tools.register": tool_register,
}
