"""The strict-mode executor's namespace sync: what crosses to the worker before a step, and back.

The kernel's ``AgentRuntime.namespace`` stays authoritative. Before each step, what changed there
since the last step (a new ``inject``, a rebinding, a deletion, an in-place change found by
fingerprint) is sent to the worker; after it, what the step changed comes back and is bound
there: plain data loaded with the restricted loader (``_unpickle``), anything else (what agent
code defined, pickled by value) kept as a :class:`~cave.strict._sharing.WorkerValue` the kernel
never loads. Large buffers travel once, into shared memory.

A mixin of :class:`~cave.strict._executor.StrictExecutor` (it uses the executor's regions,
runtime and notes); apart so that each module holds one concept.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from ._sharing import Packed, Regions, WorkerOnly, WorkerValue
from ._unpickle import safe_loads

__all__ = ["NamespaceSync"]

_MERGEABLE = (list, dict, set)
_OPAQUE = b"opaque"
"""Fingerprint of an object whose in-place changes cannot be seen (it does not pickle plainly):
it is sent again only when its name is rebound."""


class NamespaceSync:
    """Sends the kernel's namespace changes to the worker and binds the worker's changes."""

    runtime: Any
    namespace: dict[str, Any]
    regions: Regions
    _synced: dict[str, tuple[int, bytes | None, frozenset[str]]]
    _worker_regions: set[str]
    _modules: dict[str, str]
    _fresh: bool

    def _note(self, text: str) -> None:
        raise NotImplementedError

    def _syncable(self) -> list[tuple[str, Any]]:
        skip = set(self.runtime.primitives) | {"exit", "quit"}
        out = []
        for name, value in list(self.namespace.items()):
            if name in skip or (name.startswith("__") and name.endswith("__")):
                continue
            if isinstance(value, (ModuleType, WorkerOnly)):
                continue
            out.append((name, value))
        return out

    def _fingerprint(self, obj: Any) -> bytes | None:
        return self.regions.fingerprint(obj)

    def _sync(self) -> tuple[dict[str, Any], list[int]]:
        """What the worker must learn before this step: sets, deletions, regions, imports."""
        import cloudpickle

        current = self._syncable()
        names = {n for n, _ in current}
        deletes = [n for n in self._synced if n not in names]
        for name in deletes:
            del self._synced[name]
        sets: list[tuple[str, bytes, tuple[Any, ...]]] = []
        for name, obj in current:
            prev = self._synced.get(name)
            if prev is not None and prev[0] == id(obj):
                if prev[1] == _OPAQUE or self._fingerprint(obj) == prev[1]:
                    continue
            if isinstance(obj, WorkerValue):  # sent as the worker made it, never loaded here
                refs, new = self.regions.place(obj.buffers)
                if new:  # restored from a checkpoint: the one copy, into shared memory
                    obj = WorkerValue(obj.name, obj.type_name, obj.data,
                                      tuple(self.regions.view(*r) for r in refs))
                    self.namespace[name] = obj
                sets.append((name, obj.data, refs))
                self._synced[name] = (id(obj), _OPAQUE, frozenset(r[0] for r in refs))
                continue
            try:
                packed = self.regions.dumps(obj, pickler=cloudpickle.dumps)
            except Exception as exc:
                self._note(f"[strict mode] {name!r} ({type(obj).__name__}) cannot be sent to the "
                           f"worker and is not available to agent code: {exc}")
                self._synced[name] = (id(obj), _OPAQUE, frozenset())
                continue
            if packed.new_regions:  # the one copy: from now on the kernel holds the shared one
                import pickle

                obj = pickle.loads(packed.data, buffers=self.regions.buffers(packed))
                self.namespace[name] = obj
            sets.append((name, packed.data, packed.refs))
            self._synced[name] = (id(obj), self._fingerprint(obj) or _OPAQUE,
                                  frozenset(r[0] for r in packed.refs))
        needed = [rid for _, _, refs in sets for rid, _, _ in refs]
        regions = [rid for rid in dict.fromkeys(needed) if rid not in self._worker_regions]
        fds = [self.regions.fd(rid) for rid in regions]
        self._worker_regions.update(regions)
        self.regions.precopy.discard()  # early copies no object needed (removed, replaced)
        imports, self._fresh = (dict(self._modules) if self._fresh else {}), False
        message = {"set": sets, "delete": deletes, "regions": regions, "imports": imports}
        return message, fds

    def _apply(self, message: dict[str, Any], fds: list[int]) -> None:
        """Bind in the kernel what the step changed (data only: see ``_unpickle``)."""
        new = message.get("regions") or []
        if len(new) != len(fds):
            for fd in fds:
                os.close(fd)
            self._note("[strict mode] the worker sent a malformed result; it was ignored.")
            return
        for rid, fd in zip(new, fds, strict=True):
            if not (isinstance(rid, str) and rid.startswith("w")):
                os.close(fd)
                continue
            try:
                self.regions.adopt(rid, fd)
                self._worker_regions.add(rid)
            except (OSError, ValueError) as exc:
                self._note(f"[strict mode] refused shared memory from the worker: {exc}")
        for item in message.get("not_received") or []:
            name, reason = (str(x) for x in item)
            if self._synced.pop(name, None) is not None:
                self._note(f"[strict mode] `{name}` could not be loaded in the worker ({reason}); "
                           "it is sent again at the next step.")
        for name in message.get("deleted") or []:
            if isinstance(name, str) and name in self._synced:
                self.namespace.pop(name, None)
                del self._synced[name]
            elif isinstance(name, str) and isinstance(self.namespace.get(name), WorkerOnly):
                del self.namespace[name]
        for item in message.get("changed") or []:
            self._bind_changed(item)
        for item in message.get("unpicklable") or []:
            name, type_name, reason = (str(x) for x in item)
            if not name.isidentifier():
                continue
            old = self.namespace.get(name)
            if not (isinstance(old, WorkerOnly) and old.reason == reason):
                self._note(f"[strict mode] `{name}` ({type_name}) stays in the worker only and "
                           f"cannot reach the kernel ({reason}); it is lost if the worker "
                           "restarts.")
            self.namespace[name] = WorkerOnly(name, type_name, reason)
            self._synced.pop(name, None)
        modules = message.get("modules")
        if isinstance(modules, dict):
            self._modules = {str(k): str(v) for k, v in modules.items()}
        self._collect_regions()

    def _bind_changed(self, item: Any) -> None:
        try:
            name, data, refs = item[:3]
            type_name = str(item[3])[:200] if len(item) > 3 else "object"
            refs = tuple((str(r), int(o), int(n)) for r, o, n in refs)
            if not (isinstance(name, str) and name.isidentifier()) or name in \
                    self.runtime.primitives or name in ("exit", "quit"):
                return
            packed = Packed(bytes(data), refs)
            views = self.regions.buffers(packed)
        except Exception as exc:
            name = item[0] if isinstance(item, (tuple, list)) and item else "?"
            if isinstance(name, str) and name.isidentifier():
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                old = self.namespace.get(name)
                if not (isinstance(old, WorkerOnly) and old.reason == reason):
                    self._note(f"[strict mode] `{name}` stays in the worker only: the kernel "
                               f"does not load it ({reason}).")
                self.namespace[name] = WorkerOnly(name, "object", reason)
                self._synced.pop(name, None)
            return
        try:
            obj = safe_loads(packed.data, buffers=views)
        except Exception:
            # Not plain data (a function, class or instance the agent defined, pickled by value):
            # kept as bytes the kernel never loads, for the next worker and checkpoints.
            held = WorkerValue(name, type_name, packed.data, tuple(views))
            self.namespace[name] = held  # immutable: sent again only when rebound (_OPAQUE)
            self._synced[name] = (id(held), _OPAQUE, frozenset(r[0] for r in refs))
            return
        old = self.namespace.get(name)
        if type(old) is type(obj) and isinstance(obj, _MERGEABLE):
            if isinstance(old, list):
                old[:] = obj
            elif isinstance(old, (dict, set)):
                old.clear()
                old.update(obj)
            obj = old
        self.namespace[name] = obj
        self._synced[name] = (id(obj), self._fingerprint(obj) or _OPAQUE,
                              frozenset(r[0] for r in refs))

    def _collect_regions(self) -> None:
        keep: set[str] = set()
        for _, _, rids in self._synced.values():
            keep |= rids
        gone = self.regions.collect(keep)
        self._worker_regions.difference_update(gone)

