"""The strict-mode worker: a freshly exec'd Python that holds only the agent's world.

Started by the kernel (``python -I -u -m cave.strict._worker FD``) with a scrubbed environment,
no descriptors but 0-2 (stdin is ``/dev/null``, stdout and stderr are pipes the kernel reads) and
the broker channel ``FD``, in its own process group. Before any agent code runs it reads its
confinement spec from the channel and calls ``confine_current_process`` (Landlock, seccomp,
no-new-privs, RLIMIT_AS); if that cannot enforce all of it the worker reports why and exits,
never running unconfined. Then it installs the convenience layer (``_shims``) and serves steps.

A step: bind what the kernel sent (objects rebuilt on shared memory), run the code as the guard
-mode executor does (same compile, same tracebacks, same ``exit()``), then report what changed:
names bound, rebound or deleted, and in-place changes found by fingerprint. Changed objects go
back pickled with large buffers moved to shared memory (the worker then holds the shared copy).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

_FIXED = frozenset({"exit", "quit", "__builtins__", "__name__"})
_OPAQUE = b"opaque"
"""Fingerprint of an object whose changes cannot be seen (unpicklable here): sent again only
when the name is rebound."""


class _BrokerError(Exception):
    pass


def _raise_remote(error: tuple[str, Any]) -> None:
    """Re-raise in agent code what the kernel raised for a request (PermissionError, ...)."""
    import builtins

    name, args = error
    if name == "OSError" or (isinstance(args, tuple) and len(args) >= 2 and name.endswith("Error")
                             and isinstance(getattr(builtins, name, None), type)
                             and issubclass(getattr(builtins, name), OSError)):
        raise OSError(*args)
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        raise cls(*args)
    raise RuntimeError(f"{name}: {args}")


class Worker:
    def __init__(self, fd: int) -> None:
        import socket

        from ._channel import Channel
        from ._sharing import Regions

        self.channel = Channel(socket.socket(fileno=fd))
        self.regions = Regions("w", keep_fds=False)
        self.namespace: dict[str, Any] = {}
        self.last: dict[str, tuple[int, bytes | None]] = {}
        self.modules: dict[str, str] = {}
        self.primitive_names: tuple[str, ...] = ()
        self.is_fork = False
        self._dumper: Any = None
        self._identity: Any = None

    # -- start-up ---------------------------------------------------------------------------
    def start(self) -> None:
        hello, _ = self.channel.recv()
        # Opened before confinement and read with pread each step: a later open of /proc/<pid>
        # can meet a fresh procfs inode that Landlock's rule does not cover (seen under memory
        # pressure), and the per-step limit must not depend on that.
        self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._confine(hello)
        except BaseException as exc:  # report why, then exit: never run unconfined
            self.channel.send({"op": "ready", "error": f"{type(exc).__name__}: {exc}"})
            raise SystemExit(3) from None
        import importlib

        for module in hello.get("preload", ()):  # paid at start, not at the first inject; before
            try:  # the shims, so their environment reads are the worker's own
                importlib.import_module(module)
            except Exception:
                pass
        from . import _shims

        _shims.install(self.request, read_roots=tuple(hello["read_only"]),
                       write_roots=tuple(hello["read_write"]), env=dict(os.environ))
        import builtins

        from ..runtime._namespace import _RESERVED, AGENT_MODULE_NAME

        self.reserved = _RESERVED
        self.namespace.update({"__name__": AGENT_MODULE_NAME, "__builtins__": builtins})
        self.primitive_names = tuple(hello.get("primitives", ()))
        self.step_memory = hello.get("step_memory")
        os.chdir(hello["cwd"])
        os.register_at_fork(after_in_child=self._forked)
        self.channel.send({"op": "ready", "pid": os.getpid(), "error": None})

    def _forked(self) -> None:
        """A fork of the worker (agent code called ``os.fork``) loses the channel: only the
        worker talks to the kernel. The fork ends when its copy of the step ends."""
        self.is_fork = True
        self.channel.close()

    def _confine(self, hello: dict[str, Any]) -> None:
        from ..security._confinement import ConfinementSpec, confine_current_process

        spec = ConfinementSpec(
            read_only=tuple(hello["read_only"]),
            read_write=tuple(hello["read_write"]),
            allow_exec=False,
            memory_limit=hello.get("memory_limit"),
        )
        confine_current_process(spec)

    # -- broker requests ------------------------------------------------------------------------
    def request(self, kind: str, **fields: Any) -> tuple[Any, list[int]]:
        import pickle
        import signal

        # A stop (SIGINT) waits until the reply is in: a half-read message would break the channel.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.channel.send({"op": "req", "kind": kind, **fields})
            reply, fds = self.channel.recv(pickle.loads)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if reply.get("op") != "resp":
            raise _BrokerError(f"protocol error: expected a reply, got {reply.get('op')!r}")
        if reply.get("error") is not None:
            for fd in fds:
                os.close(fd)
            _raise_remote(reply["error"])
        return reply.get("value"), fds

    # -- steps --------------------------------------------------------------------------------
    def serve(self) -> None:
        import pickle

        from ._channel import ChannelClosed

        while True:
            try:
                message, fds = self.channel.recv(pickle.loads)
            except ChannelClosed:
                return
            except KeyboardInterrupt:  # a stop that arrived between steps
                continue
            if message.get("op") == "run":  # (a late reply to an interrupted request: ignored)
                self.step(message, fds)
            elif message.get("op") == "bye":
                return

    def _bind_fixed(self) -> None:
        import builtins

        from ..runtime._namespace import AGENT_MODULE_NAME

        self.namespace.update(self.reserved)
        for name in self.primitive_names:
            self.namespace[name] = _PrimitiveProxy(name, self.request)
        self.namespace["__builtins__"] = builtins
        self.namespace["__name__"] = AGENT_MODULE_NAME

    def _syncable(self) -> list[tuple[str, Any]]:
        from types import ModuleType

        skip = _FIXED | set(self.primitive_names) | set(self.reserved)
        out = []
        for name, value in list(self.namespace.items()):
            if name in skip or (name.startswith("__") and name.endswith("__")):
                continue
            if isinstance(value, ModuleType):
                if self.modules.get(name) != value.__name__:
                    self.modules[name] = value.__name__
                continue
            out.append((name, value))
        return out

    def _by_value(self) -> Any:
        if self._dumper is None:
            from ._byvalue import dumper

            self._dumper = dumper(self.namespace)
        return self._dumper

    def _fingerprint(self, obj: Any) -> bytes:
        """Plain pickle's; for what agent code defined, a pickle that names its functions and
        classes by identity (pickling them by value each step cost ~0.2 ms apiece): an
        instance's state is compared, a function's or class's own attributes are not (a new
        one is a rebinding). ``_OPAQUE`` if it does not pickle."""
        fp = None if _defined_here(obj) else self.regions.fingerprint(obj)
        if fp is None:
            if self._identity is None:
                from ._byvalue import identity_dumper

                self._identity = identity_dumper(self.namespace)
            fp = self.regions.fingerprint(obj, pickler=self._identity)
        return fp or _OPAQUE

    def _dumps(self, obj: Any) -> Any:
        """Plain pickle (what the kernel can load), else by value (what it keeps as bytes)."""
        if not _defined_here(obj):
            try:
                return self.regions.dumps(obj)
            except Exception:
                pass
        return self.regions.dumps(obj, pickler=self._by_value())

    def _receive(self, message: dict[str, Any], fds: list[int]) -> None:
        import importlib

        from ._byvalue import loads
        from ._sharing import Packed

        for rid, fd in zip(message.get("regions", ()), fds, strict=True):
            self.regions.adopt(rid, fd)
        for name, module in message.get("imports", {}).items():
            try:
                self.namespace[name] = importlib.import_module(module)
                self.modules[name] = module
            except Exception:
                pass
        for name, data, refs in message.get("set", ()):
            packed = Packed(data, tuple(refs))
            try:
                obj = loads(data, self.regions.buffers(packed), self.namespace)
            except Exception as exc:  # the kernel keeps it and tries again at the next step
                self.receive_errors.append((name, f"{type(exc).__name__}: {str(exc)[:200]}"))
                self.namespace.pop(name, None)
                self.last.pop(name, None)
                continue
            self.namespace[name] = obj
            self.last[name] = (id(obj), self._fingerprint(obj))
        for name in message.get("delete", ()):
            self.namespace.pop(name, None)
            self.last.pop(name, None)
            self.modules.pop(name, None)

    def step(self, message: dict[str, Any], fds: list[int]) -> None:
        value_repr = error = html = None
        self.receive_errors: list[tuple[str, str]] = []
        try:
            self._receive(message, fds)
            self._bind_fixed()
            value_repr, html, error = self._run(message)
        except BaseException as exc:  # noqa: B036 - report, keep serving
            error = f"{type(exc).__name__}: {exc}"
        sys.stdout.flush()
        sys.stderr.flush()
        if self.is_fork:
            os._exit(0)
        report, out_fds = self._changes(message.get("value_chars", 2000))
        try:
            self.channel.send({"op": "done", "value_repr": value_repr, "html": html,
                               "error": error, "not_received": self.receive_errors, **report},
                              out_fds)
        finally:
            for fd in out_fds:
                os.close(fd)

    def _run(self, message: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
        import linecache

        from ..runtime._executor import _compile, _execute, _format_error_safely
        from ..runtime._manifest import bounded_repr

        code, filename = message["code"], message["filename"]
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        self._limit_memory()
        try:
            body, expr = _compile(code, filename)
            value = _execute(body, expr, self.namespace)
        except BaseException as exc:  # noqa: B036 - agent code must never end the worker
            return None, None, _format_error_safely(exc)
        finally:
            self._unlimit_memory()
        if value is None:
            return None, None, None
        return bounded_repr(value, message.get("value_chars", 2000)), None, None

    def _limit_memory(self) -> None:
        if not self.step_memory:
            return
        import resource

        pages = int(os.pread(self._statm, 200, 0).split()[0])
        used = pages * os.sysconf("SC_PAGE_SIZE")
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        soft = used + int(self.step_memory)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    def _unlimit_memory(self) -> None:
        if not self.step_memory:
            return
        import resource

        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))

    def _changes(self, value_chars: int) -> tuple[dict[str, Any], list[int]]:
        """What this step bound, rebound, changed in place or deleted, ready to send."""
        from ..runtime._manifest import type_name
        from ._byvalue import loads

        changed: list[tuple[str, bytes, tuple[Any, ...], str]] = []
        unpicklable: list[tuple[str, str, str]] = []
        new_regions: list[str] = []
        current = self._syncable()
        names = {n for n, _ in current}
        deleted = [n for n in self.last if n not in names]
        for name in deleted:
            self.last.pop(name, None)
        for name, obj in current:
            prev = self.last.get(name)
            if prev is not None and prev[0] == id(obj):
                if prev[1] == _OPAQUE or self._fingerprint(obj) == prev[1]:
                    continue
            try:
                packed = self._dumps(obj)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                unpicklable.append((name, type_name(obj), reason))
                self.last[name] = (id(obj), _OPAQUE)
                continue
            if packed.new_regions:  # hold the shared copy from now on, as the kernel will
                obj = loads(packed.data, self.regions.buffers(packed), self.namespace)
                self.namespace[name] = obj
                new_regions += packed.new_regions
            changed.append((name, packed.data, packed.refs, type_name(obj)))
            self.last[name] = (id(obj), self._fingerprint(obj))
        fds = [self.regions.take_fd(rid) for rid in new_regions]
        report = {"changed": changed, "unpicklable": unpicklable, "deleted": deleted,
                  "modules": dict(self.modules), "regions": new_regions}
        return report, fds


def _defined_here(obj: Any) -> bool:
    """A function or class agent code defined, or an instance of one (plain pickle fails on
    those, after a module search: not worth trying)."""
    from ..runtime._namespace import AGENT_MODULE_NAME

    kind = obj if isinstance(obj, type) else type(obj)
    if getattr(kind, "__module__", None) == AGENT_MODULE_NAME:
        return True
    return callable(obj) and getattr(obj, "__module__", None) == AGENT_MODULE_NAME


class _PrimitiveProxy:
    """``fs``/``shell``/``net``/``env``/``human`` in the worker: each call is a broker request."""

    def __init__(self, name: str, request: Any) -> None:
        self._name = name
        self._request = request

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            value, _ = self._request("primitive", name=self._name, method=method, args=args,
                                     kwargs=kwargs)
            return value

        call.__name__ = method
        return call

    def __repr__(self) -> str:
        return f"<cave primitive {self._name} (through the strict-mode broker)>"


def main(argv: list[str]) -> int:
    fd = int(argv[1])
    worker = Worker(fd)
    try:
        worker.start()
        worker.serve()
    except SystemExit as exc:
        return int(exc.code or 0)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
