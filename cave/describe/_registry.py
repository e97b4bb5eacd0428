"""Which describer speaks for an object: registered by type or by qualified name, found by MRO.

A describer is ``fn(obj, budget) -> str | list[str]``; ``budget`` is the most characters the
manifest will keep. Registering by name (``"polars.dataframe.frame.DataFrame"``, or the short
``"polars.DataFrame"`` that the manifest prints) imports nothing: the name is compared with the
classes of an object's MRO when one is described. Built-in describers are themselves registered
as ``"module:function"`` strings, so their modules load on first use.

A class that defines ``__cave_describe__(self, budget)`` describes itself; a registered describer
for a class nearer in the MRO wins over it, so users can override a library's own method.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BUDGET", "Describer", "describe_with", "lookup", "register", "unregister"]

BUDGET = 1200
"""Characters a describer may use (the manifest's per-object cut leaves room for the header)."""
_MAX_LINES = 30
_LINE = 1000

Describer = Callable[[Any, int], "str | list[str]"]

_lock = threading.Lock()
_by_name: dict[str, Describer | str] = {}
_resolved: dict[type, Describer | None] = {}


def _names(cls: type) -> tuple[str, ...]:
    """The full ``module.QualName`` of ``cls`` and its short ``toplevel.QualName`` form."""
    mod = getattr(cls, "__module__", None) or ""
    qual = getattr(cls, "__qualname__", cls.__name__)
    full = f"{mod}.{qual}" if mod else qual
    short = f"{mod.split('.')[0]}.{qual}" if mod else qual
    return (full,) if short == full else (full, short)


def register(type_or_name: type | str, fn: Describer | str) -> None:
    """Describe instances of ``type_or_name`` (and its subclasses) with ``fn(obj, budget)``.

    ``type_or_name`` is a class or its qualified name (``"pkg.module.Class"`` or the short
    ``"pkg.Class"``); a name costs no import. ``fn`` may be a ``"module:function"`` string, loaded
    the first time an object needs it. A later registration for the same name replaces the earlier.
    """
    if isinstance(type_or_name, type):
        key = _names(type_or_name)[0]
    elif isinstance(type_or_name, str) and type_or_name.strip():
        key = type_or_name.strip()
    else:
        raise TypeError(
            f"register() needs a class or its qualified name such as 'polars.DataFrame', "
            f"got {type_or_name!r}"
        )
    if not (callable(fn) or (isinstance(fn, str) and ":" in fn)):
        raise TypeError(
            f"register() needs a callable fn(obj, budget) or 'module:function', got {fn!r}"
        )
    with _lock:
        _by_name[key] = fn
        _resolved.clear()


def unregister(type_or_name: type | str) -> None:
    """Forget the describer registered under this class or name (built-in ones included)."""
    key = _names(type_or_name)[0] if isinstance(type_or_name, type) else type_or_name
    with _lock:
        _by_name.pop(key, None)
        _resolved.clear()


def _load(fn: Describer | str) -> Describer:
    if not isinstance(fn, str):
        return fn
    module, _, attr = fn.partition(":")
    loaded: Describer = getattr(importlib.import_module(module), attr)
    return loaded


def _own_method(cls: type) -> Describer | None:
    method = cls.__dict__.get("__cave_describe__")
    if method is None:
        return None
    return lambda obj, budget: method(obj, budget)


def lookup(obj: Any) -> Describer | None:
    """The describer for ``obj``'s class, nearest in its MRO first; None for the built-in path.

    One dict lookup once a class has been seen: the manifest calls this for every object.
    """
    cls = type(obj)
    try:
        return _resolved[cls]
    except KeyError:
        pass
    found: Describer | None = None
    with _lock:
        for base in cls.__mro__:
            if base is object:
                break
            hit = next((_by_name[n] for n in _names(base) if n in _by_name), None)
            if hit is not None:
                found = _load(hit)
                break
            own = _own_method(base)
            if own is not None:
                found = own
                break
        _resolved[cls] = found
    return found


def describe_with(describer: Describer, obj: Any, budget: int = BUDGET) -> list[str]:
    """The describer's lines, held to ``budget`` characters whatever it returns."""
    out = describer(obj, budget)
    lines = out.splitlines() if isinstance(out, str) else [str(line) for line in out]
    kept: list[str] = []
    used = 0
    for line in lines[:_MAX_LINES]:
        line = line if len(line) <= _LINE else line[: _LINE - 5] + "[...]"
        if used + len(line) > budget:
            break
        kept.append(line)
        used += len(line) + 3
    if len(kept) < len(lines):
        kept.append(f"[... {len(lines) - len(kept)} more lines cut]")
    return kept
