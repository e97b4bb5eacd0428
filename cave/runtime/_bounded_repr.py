"""Bounded reprs: a ``reprlib.Repr`` that never walks or sorts a whole container.

Apart from the manifest because the executor uses it too (for ``Out: ...``), and because it is
one concept: a repr whose size, and for builtin containers whose time, is bounded.
"""

from __future__ import annotations

import itertools
import reprlib
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable
from typing import Any

__all__ = ["BoundedRepr", "bounded_repr"]


def _cut(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, saying how much was dropped."""
    if len(text) <= limit:
        return text
    note = f"[... {len(text) - limit:,} chars cut]"
    return text[: max(0, limit - len(note))] + note


def _error_text(exc: BaseException) -> str:
    try:
        msg = str(exc)
    except Exception:
        msg = "<str() failed>"
    return f"{type(exc).__name__}: {msg[:120]}"


_CONTAINER_REPRS = {
    dict.__repr__,
    OrderedDict.__repr__,
    defaultdict.__repr__,
    Counter.__repr__,
    list.__repr__,
    tuple.__repr__,
    set.__repr__,
    frozenset.__repr__,
    deque.__repr__,
}


class BoundedRepr(reprlib.Repr):
    """``reprlib.Repr`` that never walks or sorts a whole container.

    The standard one sorts every set and dict key (``_possibly_sorted``) before taking the first
    few, and sends dict/list subclasses such as ``Counter`` or ``OrderedDict`` to their full
    ``repr``. Here containers are read in iteration order with ``islice``, subclasses that keep a
    builtin ``__repr__`` are shortened the same way, and a failing ``__repr__`` is reported.
    """

    def __init__(self, *, items: int = 6, string: int = 60, other: int = 200, level: int = 3):
        super().__init__()
        self.maxlevel = level
        self.maxtuple = self.maxlist = self.maxset = self.maxfrozenset = self.maxdeque = items
        self.maxarray = items
        self.maxdict = max(1, items - 2)
        self.maxstring = string
        self.maxother = other
        self.maxlong = 60

    def repr1(self, x: Any, level: int) -> str:
        t = type(x)
        if t in (dict, list, tuple, set, frozenset, deque, str, int, bool, float, type(None)):
            return super().repr1(x, level)
        if isinstance(x, tuple) and hasattr(t, "_fields"):
            return self._repr_namedtuple(x, level)
        if getattr(t, "__repr__", None) in _CONTAINER_REPRS:
            handlers: tuple[tuple[type, Callable[[Any, int], str]], ...] = (
                (dict, self.repr_dict),
                (list, self.repr_list),
                (tuple, self.repr_tuple),
                (set, self.repr_set),
                (frozenset, self.repr_frozenset),
                (deque, self.repr_deque),
            )
            for base, method in handlers:
                if isinstance(x, base):
                    return f"{t.__name__}({method(x, level)})"
        if isinstance(x, int) and not isinstance(x, bool):
            return self.repr_int(x, level)
        if isinstance(x, str):
            return self.repr_str(x, level)
        return self.repr_instance(x, level)

    def _repr_namedtuple(self, x: tuple[Any, ...], level: int) -> str:
        fields = type(x)._fields  # type: ignore[attr-defined]
        if level <= 0:
            return f"{type(x).__name__}({self.fillvalue})"
        parts = [
            f"{f}={self.repr1(v, level - 1)}"
            for f, v in itertools.islice(zip(fields, x, strict=False), self.maxtuple)
        ]
        if len(fields) > self.maxtuple:
            parts.append(self.fillvalue)
        return f"{type(x).__name__}({', '.join(parts)})"

    def _repr_unsorted(self, x: Any, level: int, left: str, right: str, maxiter: int) -> str:
        """Like reprlib's ``_repr_iterable`` on a set, minus the sort of every element."""
        if level <= 0:
            return left + self.fillvalue + right
        pieces = [self.repr1(e, level - 1) for e in itertools.islice(iter(x), maxiter)]
        if len(x) > maxiter:
            pieces.append(self.fillvalue)
        return left + ", ".join(pieces) + right

    def repr_set(self, x: Any, level: int) -> str:
        return self._repr_unsorted(x, level, "{", "}", self.maxset) if x else "set()"

    def repr_frozenset(self, x: Any, level: int) -> str:
        if not x:
            return "frozenset()"
        return self._repr_unsorted(x, level, "frozenset({", "})", self.maxfrozenset)

    def repr_dict(self, x: Any, level: int) -> str:
        n = len(x)
        if n == 0:
            return "{}"
        if level <= 0:
            return "{" + self.fillvalue + "}"
        pieces = [
            f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
            for k, v in itertools.islice(dict.items(x), self.maxdict)
        ]
        if n > self.maxdict:
            pieces.append(self.fillvalue)
        return "{" + ", ".join(pieces) + "}"

    def repr_int(self, x: Any, level: int) -> str:
        # repr() of a huge int is quadratic and raises past 4300 digits (sys.int_info).
        bits = int.bit_length(x)
        if bits > 4 * self.maxlong:
            return f"<int with {bits:,} bits>"
        return super().repr_int(x, level)

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            s = repr(x)
        except Exception as exc:
            return f"<repr failed: {_error_text(exc)}>"
        if not isinstance(s, str):  # pragma: no cover - repr() itself enforces str
            return f"<repr failed: returned {type(s).__name__}>"
        if len(s) > self.maxother:
            i = max(0, (self.maxother - 3) // 2)
            j = max(0, self.maxother - 3 - i)
            s = s[:i] + self.fillvalue + s[len(s) - j :]
        return s


_SHORT = BoundedRepr()


def bounded_repr(obj: Any, limit: int = 2000) -> str:
    """A repr of at most ``limit`` characters that never walks a whole container.

    Used for the value of a final expression (``Out: ...``). Known multi-line reprs (pandas,
    numpy) are kept multi-line, since their own repr is already bounded in rows and elements.
    """
    r = BoundedRepr(items=30, string=limit, other=limit, level=4)
    try:
        return _cut(r.repr(obj), limit)
    except Exception as exc:  # a __len__ or __iter__ that raises inside a container
        return f"<repr failed: {_error_text(exc)}>"
