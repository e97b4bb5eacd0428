"""Pickling what agent code defines (functions, classes, their instances) by value, in the worker.

Plain pickle names a function or class by module and qualified name, and agent code's module
(``__cave_agent__``) is not importable, so what the agent defines cannot travel that way. The
worker pickles it with cloudpickle instead (by value), with the agent's namespace written as a
persistent id, never copied: a function defined by agent code comes back with the namespace it
is loaded into as its ``__globals__``, so it sees the current values of the names it reads, as
it did before (the checkpoint pickler does the same for the same reason; it is not reused here
so that the confined worker does not import the checkpoint store).

Who loads these bytes, and where (the security of it):

* the kernel never does: they can name any callable, so loading them would run code the
  confined worker chose. It keeps them as a :class:`~cave.strict._sharing.WorkerValue` it
  hands, unread, to the next worker (after a crash, a memory limit or a restart), where loading
  them runs only what agent code could run there anyway;
* in guard mode agent code runs in the kernel under the guard, so there the next agent step
  loads them, inside the guard's agent-code block (``runtime._held``): only when agent code runs
  anyway, with exactly the authority it has there (never at the switch itself).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["dumper", "identity_dumper", "loads"]

_NS = ("ns",)


def dumper(namespace: Mapping[str, Any]) -> Callable[..., bytes]:
    """A ``dumps(obj, protocol=, buffer_callback=)`` that pickles agent definitions by value."""
    import cloudpickle

    class _Pickler(cloudpickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return _NS if obj is namespace else None

        def _dynamic_function_reduce(self, func: Any) -> Any:
            reduced = super()._dynamic_function_reduce(func)
            if func.__globals__ is not namespace:
                return reduced
            # Refer to the namespace instead of copying the globals the function reads.
            make, newargs, (state, slotstate), listitems, dictitems, setter = reduced
            slotstate = dict(slotstate, __globals__={})
            return make, (newargs[0], namespace, *newargs[2:]), (state, slotstate), \
                listitems, dictitems, setter

    def dumps(obj: Any, protocol: int = 5, buffer_callback: Any = None) -> bytes:
        out = io.BytesIO()
        _Pickler(out, protocol=protocol, buffer_callback=buffer_callback).dump(obj)
        return out.getvalue()

    return dumps


def identity_dumper(namespace: Mapping[str, Any]) -> Callable[..., bytes]:
    """A ``dumps`` for fingerprints: functions and classes agent code defined are named by
    identity (a persistent id), not pickled; everything else as plain pickle does."""
    import types

    from ..runtime._namespace import AGENT_MODULE_NAME

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if obj is namespace:
                return _NS
            if isinstance(obj, (types.FunctionType, type)) and \
                    getattr(obj, "__module__", None) == AGENT_MODULE_NAME:
                return ("def", id(obj))
            return None

    def dumps(obj: Any, protocol: int = 5, buffer_callback: Any = None) -> bytes:
        out = io.BytesIO()
        _Pickler(out, protocol=protocol, buffer_callback=buffer_callback).dump(obj)
        return out.getvalue()

    return dumps


class _Loader(pickle.Unpickler):
    def __init__(self, data: bytes, buffers: Iterable[Any], namespace: dict[str, Any]) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._namespace = namespace

    def persistent_load(self, pid: Any) -> Any:
        if pid == _NS:
            return self._namespace
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def loads(data: bytes, buffers: Iterable[Any], namespace: dict[str, Any]) -> Any:
    """Load bytes from :func:`dumper` (or plain pickle) with ``namespace`` as the agent's globals.

    Runs whatever the bytes name: call it only where agent code may run (the worker, or inside
    the guard's agent-code block in guard mode).
    """
    return _Loader(data, buffers, namespace).load()
