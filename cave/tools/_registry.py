"""``Tools``: the registered tools of one session, and calls to them through the Deno process.

A call runs on the calling thread (an agent step's thread, or a user cell's): it sends the call
frame, then serves the tool's syscalls there until the result comes, so an approval a syscall
needs appears in the running cell and the stop button (``KeyboardInterrupt`` in that thread)
reaches it. Calls are one at a time per session. Starting and killing the process, ``deno doc``
and every file write in the session directory happen on the ``Owner`` thread.

Limits are enforced on this side of the pipe: wall time (at the limit, or on stop, the tool's
worker is terminated; if the process does not confirm within ``CANCEL_GRACE_S`` it is killed),
syscalls per call, output bytes (cut with a note), result size (the worker refuses to send a
larger result). The V8 heap limit is Deno's own; exceeding it kills the process, and the call
fails with ``ToolError(kind="crash")``. Any call finding the process gone starts a new one and
loads every registered tool into it again.
"""

from __future__ import annotations

import base64
import json
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._errors import ToolError
from ..security._ops import tool_digest
from ..security._policy import Policy
from ..security._primitives import call_on_behalf
from ._broker import SyscallError, ceiling_policy, run_syscall
from ._process import DenoProcess, Malformed, Owner, deno_binary, describe_end
from ._signature import Signature, read_signature
from ._spec import MAX_SOURCE_BYTES, ToolLimits, ToolSpec, check_name

__all__ = ["Tools"]

START_TIMEOUT_S = 60.0
CANCEL_GRACE_S = 2.0
_POLL_S = 0.05


_IMPORT = re.compile(r"""\bfrom\s*["'`]|\bimport\s*[("'`]|///\s*<reference|\brequire\s*\(""")
"""Anything that could make ``deno doc`` read another file (it follows static imports and
reference directives, unsandboxed); conservative: also matches such text in strings."""


def _is_agent_thread() -> bool:
    box: list[Any] = []
    sys.audit("cave.security", "is_agent", (), box)
    return bool(box and box[0])


def _jsonable(obj: Any) -> Any:
    item = getattr(obj, "item", None)  # numpy and pandas scalars
    if callable(item):
        return item()
    iso = getattr(obj, "isoformat", None)  # datetime, pandas Timestamp
    if callable(iso):
        return iso()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON")


class Tools:
    """The session's TypeScript tools: ``register``, ``call``, ``unregister``, ``specs``."""

    def __init__(
        self,
        *,
        workspace: Path,
        directory: Path,
        primitives: Callable[[], Mapping[str, Any]],
        record: Callable[..., None],
        limits: ToolLimits | None = None,
        runner: str | None = None,
    ) -> None:
        """``directory``: where DENO_DIR and source copies live (inside the session directory).
        ``primitives``: the session's primitives (built lazily). ``runner``: another main.ts,
        for tests of the protocol."""
        self.workspace = workspace
        self.directory = directory
        self._primitives = primitives
        self._audit = record
        self.limits = limits or ToolLimits()
        self._runner = runner
        self._specs: dict[str, ToolSpec] = {}
        self._ceilings: dict[str, Policy] = {}
        self._owner = Owner()
        self._proc: DenoProcess | None = None
        self._lock = threading.Lock()
        self._calls = 0
        self.starts = 0
        """How many times a Deno process was started (restarts included)."""
        self.deno_version = ""

    def _record(self, kind: str, /, **fields: Any) -> None:
        self._recorder()(kind, **fields)

    def _recorder(self) -> Callable[..., None]:
        """How this thread audits: on a thread running agent code, through the owner thread (the
        log refuses writes from agent threads, so that agent code cannot forge records)."""
        if not _is_agent_thread():
            return self._audit
        audit, owner = self._audit, self._owner

        def via_owner(kind: str, /, **fields: Any) -> None:
            owner.run(lambda: audit(kind, **fields))

        return via_owner

    # -- registry ----------------------------------------------------------------------------
    @property
    def specs(self) -> Mapping[str, ToolSpec]:
        return dict(self._specs)

    def register(
        self,
        name: str,
        source: str | Path,
        capabilities: Any = (),
        description: str | None = None,
    ) -> ToolSpec:
        """Register (or replace) a tool; from agent code this asks for approval first."""
        name = check_name(name)
        text = self._source_text(name, source)
        if isinstance(capabilities, str):
            raise ToolError(
                f"capabilities must be a list of strings, e.g. [{capabilities!r}], not one string",
                tool=name,
                kind="register",
            )
        caps = tuple(capabilities)
        if not all(isinstance(c, str) for c in caps):
            raise ToolError("capabilities must be strings such as 'fs.read:data/**'", tool=name,
                            kind="register")
        desc = "" if description is None else str(description)
        try:
            ceiling = ceiling_policy(name, caps, self.workspace)
        except ValueError as exc:
            raise ToolError(f"tool {name!r}: {exc}", tool=name, kind="register") from None
        signature = self._owner.run(lambda: self._signature(name, text))
        by = "agent" if _is_agent_thread() else "user"
        if by == "agent":
            fs = self._primitives()["fs"]
            who = f"tools.register({name!r}, ...) in the agent's code"
            digest = call_on_behalf(fs, "tools.register", (name, text, caps, desc), who)
        else:
            digest = tool_digest(name, text, caps, desc)
        spec = ToolSpec(name, text, caps, desc, signature, digest, by)
        self._install(spec, ceiling)
        self._record(
            "tool.register", tool=name, sha256=digest, capabilities=list(caps), by=by,
            signature=signature.text(name),
        )
        return spec

    def _source_text(self, name: str, source: str | Path) -> str:
        if isinstance(source, Path) or (
            isinstance(source, str) and "\n" not in source and source.endswith((".ts", ".js"))
        ):
            try:
                with open(source, encoding="utf-8") as f:
                    source = f.read(MAX_SOURCE_BYTES + 1)
            except OSError as exc:
                raise ToolError(
                    f"tool {name!r}: cannot read the source file {str(source)!r}: {exc}",
                    tool=name, kind="register",
                ) from None
        if not isinstance(source, str) or not source.strip():
            raise ToolError(
                f"tool {name!r}: source must be TypeScript text (or a path to a .ts file) "
                "exporting `async function run(args, cave)`",
                tool=name, kind="register",
            )
        found = _IMPORT.search(source)
        if found is not None:
            line = source.count("\n", 0, found.start()) + 1
            raise ToolError(
                f"tool {name!r}: a tool is one file, with no imports (line {line}: "
                f"{found.group(0).strip()!r}); inline what it needs. (Imports are refused "
                "before `deno doc` reads the source, which is not sandboxed.)",
                tool=name, kind="register",
            )
        if len(source.encode("utf-8")) > MAX_SOURCE_BYTES:
            raise ToolError(
                f"tool {name!r}: the source is over {MAX_SOURCE_BYTES:,} bytes; split it",
                tool=name, kind="register",
            )
        return source

    def _signature(self, name: str, text: str) -> Signature:
        """On the owner thread: a copy in the session directory, then ``deno doc``."""
        folder = self.directory / "sources"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"{name}.ts"
        path.write_text(text, encoding="utf-8")
        return read_signature(deno_binary(), path, self.directory / "deno")

    def _install(self, spec: ToolSpec, ceiling: Policy) -> None:
        with self._lock:
            self._specs[spec.name] = spec
            self._ceilings[spec.name] = ceiling
            proc = self._proc
            if proc is not None and proc.alive:
                proc.send(self._load_frame(spec))

    @staticmethod
    def _load_frame(spec: ToolSpec) -> dict[str, Any]:
        b64 = base64.b64encode(spec.source.encode("utf-8")).decode("ascii")
        return {"type": "load", "tool": spec.name, "b64": b64}

    def unregister(self, name: str) -> None:
        with self._lock:
            if self._specs.pop(name, None) is None:
                raise ToolError(f"no tool named {name!r}; registered: {sorted(self._specs)}",
                                tool=name, kind="register")
            self._ceilings.pop(name, None)
            if self._proc is not None and self._proc.alive:
                self._proc.send({"type": "unload", "tool": name})
        self._record("tool.unregister", tool=name)

    def describe(self) -> str:
        """The manifest section: every tool's call signature, description and capabilities."""
        if not self._specs:
            return ""
        lines = ["TypeScript tools (call as tools.NAME(**args); they return JSON values):"]
        lines += [spec.describe() for spec in self._specs.values()]
        return "\n".join(lines)

    # -- checkpoints -------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        return [spec.to_dict() for spec in self._specs.values()]

    def restore(self, items: Any) -> None:
        """Replace the registry with a checkpoint's tools (already verified by the store)."""
        specs = [ToolSpec.from_dict(item) for item in items or ()]
        ceilings = {s.name: ceiling_policy(s.name, s.capabilities, self.workspace) for s in specs}
        with self._lock:
            old = set(self._specs)
            self._specs = {s.name: s for s in specs}
            self._ceilings = ceilings
            proc = self._proc
            if proc is not None and proc.alive:
                for name in old - set(self._specs):
                    proc.send({"type": "unload", "tool": name})
                for spec in specs:
                    proc.send(self._load_frame(spec))
        self._record("tool.restore", tools=[s.name for s in specs])

    # -- the process -------------------------------------------------------------------------
    def _start(self) -> DenoProcess:
        """On the owner thread: a new process with every tool loaded."""
        proc = DenoProcess(
            deno_binary(),
            deno_dir=self.directory / "deno",
            heap_mb=self.limits.heap_mb,
            runner=self._runner,
        )
        self.deno_version = proc.wait_ready(START_TIMEOUT_S)
        self.starts += 1
        self._audit("tool.process", pid=proc.pid, deno=self.deno_version, start=self.starts)
        return proc

    def _discard(self, proc: DenoProcess) -> None:
        self._owner.run(proc.kill)
        with self._lock:
            if self._proc is proc:
                self._proc = None

    def close(self) -> None:
        proc = self._proc
        if proc is not None:
            self._discard(proc)

    # -- calls -------------------------------------------------------------------------------
    def call(self, name: str, /, **args: Any) -> Any:
        """Run tool ``name`` with keyword ``args``; its JSON result as Python objects."""
        spec = self._specs.get(name) if isinstance(name, str) else None
        if spec is None:
            raise ToolError(
                f"no tool named {name!r}; registered: {', '.join(sorted(self._specs)) or 'none'}",
                tool=str(name), kind="register",
            )
        try:
            payload = json.loads(json.dumps(args, default=_jsonable, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ToolError(
                f"tool {name!r}: its arguments must be JSON values (dicts, lists, str, numbers, "
                f"bool, None; NaN and inf are not JSON): {exc}",
                tool=name, kind="error",
            ) from None
        while not self._lock.acquire(timeout=_POLL_S):
            pass  # another call runs; waiting here stays interruptible
        try:
            return self._call_locked(spec, payload)
        finally:
            self._lock.release()

    def _call_locked(self, spec: ToolSpec, payload: Any) -> Any:
        # _lock is held: _process and _install must not take it again.
        proc = self._ensure_locked()
        self._calls += 1
        call_id = self._calls
        limits = self.limits
        ceiling = self._ceilings[spec.name]
        started = time.monotonic()
        deadline = started + limits.timeout
        syscalls = 0
        out = _Output(limits.max_output_bytes)
        record = self._recorder()  # asked once per call, not per syscall
        outcome = "error"
        try:
            proc.send({
                "type": "call", "id": call_id, "tool": spec.name, "args": payload,
                "max_output": limits.max_output_bytes, "max_result": limits.max_result_bytes,
            })
            while True:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    self._cancel(proc, call_id)
                    outcome = "timeout"
                    raise ToolError(
                        f"tool {spec.name!r} did not finish within {limits.timeout:g} s and was "
                        "stopped; make it faster, or raise the limit (cave.tools.limits)",
                        tool=spec.name, kind="timeout",
                    )
                try:
                    item = proc.frames.get(timeout=min(_POLL_S, wait))
                except queue.Empty:
                    continue
                if not isinstance(item, dict):
                    raise self._dead(proc, spec.name, item)
                kind = item["type"]
                if item.get("id") != call_id:
                    continue  # a late frame of an earlier, cancelled call
                if kind == "log":
                    out.write(str(item.get("text", "")), item.get("stream") == "stderr")
                elif kind == "sys":
                    syscalls += 1
                    before = time.monotonic()
                    reply = self._syscall(spec, ceiling, item, syscalls, record)
                    deadline += time.monotonic() - before  # waiting for a person is not run time
                    reply.update(type="sysret", id=call_id, seq=item.get("seq"))
                    proc.send(reply)
                elif kind == "result":
                    out.finish(int(item.get("cut") or 0))
                    outcome = "ok" if item.get("ok") is True else "error"
                    return self._result(spec, item)
        except ToolError:
            raise
        except BaseException:  # noqa: B036 - the stop button or a step timeout: stop the tool too
            outcome = "stopped"
            self._cancel(proc, call_id)
            raise
        finally:
            out.finish(0)
            record(
                "tool.call", tool=spec.name, outcome=outcome, syscalls=syscalls,
                duration_s=round(time.monotonic() - started, 4),
            )

    def _ensure_locked(self) -> DenoProcess:
        proc = self._proc
        if proc is not None and proc.alive:
            return proc
        if proc is not None:
            self._owner.run(proc.kill)
        proc = self._owner.run(self._start)
        self._proc = proc
        for spec in self._specs.values():
            proc.send(self._load_frame(spec))
        return proc

    def _dead(self, proc: DenoProcess, tool: str, item: Any) -> ToolError:
        """Kill the process that stopped answering; the error to raise."""
        self._owner.run(proc.kill)
        self._proc = None
        kind = "protocol" if isinstance(item, Malformed) else "crash"
        return ToolError(
            f"tool {tool!r} failed: the Deno process stopped answering ({describe_end(item)}). "
            "It was killed; the next call starts a new one with every tool loaded again.",
            tool=tool, kind=kind,
        )

    def _cancel(self, proc: DenoProcess, call_id: int) -> None:
        """Terminate the call's worker; kill the whole process if it does not confirm."""
        proc.send({"type": "cancel", "id": call_id})
        give_up = time.monotonic() + CANCEL_GRACE_S
        while time.monotonic() < give_up:
            try:
                item = proc.frames.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if not isinstance(item, dict):
                break
            if item.get("type") == "result" and item.get("id") == call_id:
                return
        self._owner.run(proc.kill)
        self._proc = None

    def _syscall(
        self,
        spec: ToolSpec,
        ceiling: Policy,
        frame: dict[str, Any],
        count: int,
        record: Callable[..., None],
    ) -> dict[str, Any]:
        op = str(frame.get("op"))
        if count > self.limits.max_syscalls:
            record("tool.syscall", tool=spec.name, op=op, ok=False, error="syscall limit")
            return {"ok": False, "error": {
                "name": "RangeError",
                "message": f"cave.{op}: this call already made {self.limits.max_syscalls:,} "
                           "syscalls, the limit per call (ToolLimits.max_syscalls)",
            }}
        try:
            value = run_syscall(
                spec.name, ceiling, self._primitives(), self.workspace, record, op,
                frame.get("args"),
            )
        except SyscallError as exc:
            return {"ok": False, "error": {"name": exc.name, "message": str(exc)}}
        return {"ok": True, "value": value}

    @staticmethod
    def _result(spec: ToolSpec, frame: dict[str, Any]) -> Any:
        if frame.get("ok") is True:
            return frame.get("value")
        raw = frame.get("error")
        error: dict[str, Any] = raw if isinstance(raw, dict) else {}
        js_name = str(error.get("name") or "Error")
        js_message = str(error.get("message") or "")
        stack = str(error.get("stack") or "")
        shown = stack if stack.startswith(f"{js_name}") else f"{js_name}: {js_message}\n{stack}"
        too_big = js_name == "RangeError" and "over the limit" in js_message
        return_kind = "limit" if too_big else "error"
        raise ToolError(
            f"tool {spec.name!r} failed: {shown.strip()}",
            tool=spec.name, kind=return_kind, js_name=js_name, js_message=js_message,
            stack=stack,
        )


class _Output:
    """The call's console output, written to this thread's stdout/stderr, cut at a byte limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cut = 0
        self.done = False

    def write(self, text: str, err: bool) -> None:
        data = text.encode("utf-8", "replace")
        room = self.limit - self.used
        if len(data) > room:
            self.cut += len(data) - max(room, 0)
            data = data[: max(room, 0)]
            text = data.decode("utf-8", "ignore")
        if not data:
            return
        self.used += len(data)
        stream = sys.stderr if err else sys.stdout
        stream.write(text)

    def finish(self, cut_chars: int) -> None:
        if self.done:
            return
        self.done = True
        if self.cut or cut_chars:
            total = self.cut + cut_chars
            sys.stdout.write(
                f"\n[... the tool's output was cut at {self.limit:,} bytes; about {total:,} more "
                "bytes were dropped (ToolLimits.max_output_bytes) ...]\n"
            )
        sys.stdout.flush()

