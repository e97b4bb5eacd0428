"""Describe live objects for the prompt, at a cost that does not depend on their size.

The manifest is rebuilt before every model call, so it must be cheap and bounded: a 1 GB DataFrame
is described with the same handful of O(1) calls as a 10-row one (``shape``, the first columns and
their dtypes, ``head(3)``), containers by ``len()`` and their first few elements, never by iterating
or sorting all of them. pandas and numpy are never imported here; they are recognised by the module
and name of a class in the object's MRO, so users who do not use them pay nothing.

Remaining risk, stated exactly: sizes are bounded everywhere, but *time* is bounded only for types
we know. For an unknown type we call its ``__repr__`` (through :class:`BoundedRepr`) and cut the
result; a ``__repr__`` that is slow or builds a huge string costs that time once per manifest. A
``__repr__`` (or ``shape``, ``__len__``, ...) that raises never breaks the manifest: the section
says ``<repr failed: ...>`` or ``<... unavailable: ...>`` instead.
"""

from __future__ import annotations

import inspect
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

from ..describe._registry import describe_with
from ..describe._registry import lookup as _lookup_describer
from ._bounded_repr import _SHORT, BoundedRepr, _error_text, bounded_repr
from ._bounded_repr import _cut as _cut

__all__ = [
    "BoundedRepr",
    "bounded_repr",
    "build_manifest",
    "describe",
    "type_name",
]

_MAX_COLUMNS = 40
"""Columns listed with their dtype; the rest are counted."""
_SAMPLE_ROWS = 3
_SAMPLE_COLUMNS = 12
_CELL_CHARS = 24
"""Widest a sample cell (or column label) may be."""
_LINE_CHARS = 160
"""Any single line of a description is cut to this width."""
_MAX_VARIABLES = 50


def type_name(obj: Any) -> str:
    """``pandas.DataFrame``, ``numpy.ndarray``, ``int``: the class name with its top package."""
    t = type(obj)
    mod = getattr(t, "__module__", None)
    qual = getattr(t, "__qualname__", t.__name__)
    if not isinstance(mod, str) or mod in ("builtins", "__main__", "__cave_agent__"):
        return qual
    return f"{mod.split('.')[0]}.{qual}"


# --------------------------------------------------------------------------- recognisers


def _mro_has(obj: Any, module_prefix: str, name: str) -> type | None:
    """The class in ``type(obj).__mro__`` named ``name`` from ``module_prefix``, or None."""
    for cls in type(obj).__mro__:
        mod = getattr(cls, "__module__", "") or ""
        if cls.__name__ == name and (mod == module_prefix or mod.startswith(module_prefix + ".")):
            return cls
    return None


def _first_doc_line(obj: Any) -> str:
    try:
        doc = inspect.getdoc(obj)
    except Exception:
        return ""
    if not isinstance(doc, str):
        return ""
    for line in doc.strip().splitlines():
        if line.strip():
            return _cut(line.strip(), 200)
    return ""


def _signature(obj: Any) -> str:
    try:
        # eval_str turns `from __future__ import annotations` strings back into names.
        return _cut(str(inspect.signature(obj, eval_str=True)), 300)
    except Exception:
        pass
    try:
        return _cut(str(inspect.signature(obj)), 300)
    except Exception:
        return "(...)"


def _guard(label: str, fn: Callable[[], list[str]]) -> list[str]:
    """Run one section; a failure becomes a line, never an exception."""
    try:
        return fn()
    except Exception as exc:
        return [f"<{label} unavailable: {_error_text(exc)}>"]


def _indent(text: str) -> list[str]:
    return ["  " + _cut(line.rstrip(), _LINE_CHARS) for line in text.splitlines()]


def _describe_dataframe(obj: Any, base: type) -> list[str]:
    def shape() -> list[str]:
        rows, ncols = obj.shape
        index = obj.index
        return [
            f"shape: {rows:,} rows x {ncols:,} columns; index: {type(index).__name__} "
            f"(dtype {index.dtype})"
        ]

    def columns() -> list[str]:
        ncols = obj.shape[1]
        # dtypes builds a Series over *all* columns: fine for normal frames, not for 100k columns.
        dtypes = obj.dtypes if ncols <= 2000 else obj.iloc[:, :_MAX_COLUMNS].dtypes
        cols = [
            f"{_cut(str(name), 40)} ({dtype})"
            for name, dtype in itertools.islice(dtypes.items(), _MAX_COLUMNS)
        ]
        more = f", +{ncols - _MAX_COLUMNS:,} more" if ncols > _MAX_COLUMNS else ""
        return [_cut("columns: " + ", ".join(cols) + more, 1000)]

    def sample() -> list[str]:
        ncols = obj.shape[1]
        head = obj.iloc[:_SAMPLE_ROWS] if ncols <= _SAMPLE_COLUMNS else obj.iloc[
            :_SAMPLE_ROWS, :_SAMPLE_COLUMNS
        ]
        if type(head) is not base:  # a subclass may override iteration or repr: use plain pandas
            head = base(head)
        rows = head.to_numpy(dtype=object).tolist()  # at most 3 x 12 cells
        text = _table(list(head.columns), list(head.index), rows)
        more = " (first columns)" if ncols > _SAMPLE_COLUMNS else ""
        return [f"first {_SAMPLE_ROWS} rows{more}:", *_indent(text)]

    return _guard("shape", shape) + _guard("columns", columns) + _guard("sample rows", sample)


def _describe_series(obj: Any, base: type) -> list[str]:
    def info() -> list[str]:
        return [f"length: {obj.shape[0]:,}; dtype: {obj.dtype}; name: {_SHORT.repr(obj.name)}"]

    def sample() -> list[str]:
        head = obj.iloc[:5]
        if type(head) is not base:
            head = base(head)
        values = head.to_numpy(dtype=object).tolist()
        name = "" if obj.name is None else obj.name
        text = _table([name], list(head.index), [[v] for v in values])
        return ["first values:", *_indent(text)]

    return _guard("shape", info) + _guard("sample values", sample)


_SCALAR_STR_MODULES = {"pandas", "numpy", "datetime", "decimal", "fractions", "uuid"}
_CELL = BoundedRepr(items=3, string=_CELL_CHARS, other=_CELL_CHARS, level=1)


def _cell(value: Any) -> str:
    """One table cell, at most ``_CELL_CHARS`` wide; never a full repr of a big object."""
    if isinstance(value, float):
        text = "NaN" if value != value else f"{value:.6g}"
        if text.lstrip("-").isdigit():
            text += ".0"  # keep a float looking like one, as pandas does
    elif isinstance(value, str):
        text = value
    elif type(value).__module__.split(".")[0] in _SCALAR_STR_MODULES:
        text = _CELL.repr1(str(value), 1)[1:-1]  # Timestamp, Decimal, np.datetime64: str is short
    else:
        text = _CELL.repr(value)
    text = " ".join(text.split())
    return text if len(text) <= _CELL_CHARS else text[: _CELL_CHARS - 3] + "..."


def _table(columns: list[Any], index: list[Any], rows: list[list[Any]]) -> str:
    """Sample rows as a right-aligned text table, like pandas' ``to_string`` but ~10x cheaper.

    ``to_string`` costs 0.4-0.9 ms per frame (it formats column by column with padding logic);
    the manifest formats a few dozen cells itself so that many frames stay within its budget.
    """
    heads = [_cell(c) for c in columns]
    labels = [_cell(i) for i in index]
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(heads)]
    iw = max([len(x) for x in labels] + [0])
    lines = [" " * iw + "  " + "  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))]
    for label, row in zip(labels, cells, strict=True):
        body = "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
        lines.append(label.ljust(iw) + "  " + body)
    return "\n".join(lines)


def _describe_array(obj: Any, numpy: bool) -> list[str]:
    def info() -> list[str]:
        shape = tuple(obj.shape)
        line = f"shape: {shape}; dtype: {obj.dtype}"
        if numpy:
            line += f"; {_human_bytes(int(obj.nbytes))}"
        return [line]

    def sample() -> list[str]:
        # flat[:k] reads k elements; ravel() would copy a non-contiguous array.
        first = obj.flat[:6].tolist()
        return ["first values: " + BoundedRepr(items=6, string=40).repr(first)]

    return _guard("shape", info) + (_guard("sample values", sample) if numpy else [])


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover


def _describe_container(obj: Any) -> list[str]:
    def info() -> list[str]:
        n = len(obj)
        if isinstance(obj, Mapping):
            keys = list(itertools.islice(iter(obj), 8))
            vtypes = [type_name(obj[k]) for k in keys[:5]]
            lines = [f"length: {n:,}"]
            if keys:
                lines.append("first keys: " + ", ".join(_SHORT.repr1(k, 1) for k in keys))
                lines.append("value types: " + ", ".join(vtypes))
            return lines
        first = list(itertools.islice(iter(obj), 5))
        lines = [f"length: {n:,}"]
        if first:
            lines.append("first element types: " + ", ".join(type_name(e) for e in first))
            lines.append("head: " + BoundedRepr(items=5, string=40, other=80).repr(obj))
        return lines

    return _guard("length", info)


def _describe_text(obj: Any) -> list[str]:
    def info() -> list[str]:
        n = len(obj)
        head = obj[:200]
        if isinstance(head, memoryview):
            head = head.tobytes()
        more = " ..." if n > 200 else ""
        return [f"length: {n:,}", f"head: {head!r}{more}"]

    return _guard("length", info)


def _describe_callable(obj: Any) -> list[str]:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(name, str):
        name = type(obj).__name__
    line = f"{name}{_signature(obj)}"
    doc = _first_doc_line(obj)
    return [line + (f": {doc}" if doc else "")]


def _summary(obj: Any) -> list[str]:
    """The body lines for one object, chosen by what it is."""
    if isinstance(obj, ModuleType):
        return [f"module {getattr(obj, '__name__', '?')}"]
    if isinstance(obj, type):
        doc = _first_doc_line(obj)
        return [f"class {obj.__qualname__}{_signature(obj)}" + (f": {doc}" if doc else "")]
    describer = _lookup_describer(obj)  # cave.describe.register / __cave_describe__
    if describer is not None:
        return describe_with(describer, obj)
    frame_class = _mro_has(obj, "pandas", "DataFrame")
    if frame_class is not None:
        return _describe_dataframe(obj, frame_class)
    series_class = _mro_has(obj, "pandas", "Series")
    if series_class is not None:
        return _describe_series(obj, series_class)
    if _mro_has(obj, "numpy", "ndarray"):
        return _describe_array(obj, numpy=True)
    if hasattr(type(obj), "shape") and hasattr(type(obj), "dtype"):
        return _describe_array(obj, numpy=False)  # torch, jax, cupy, dask: metadata only
    if obj is None or isinstance(obj, (bool, int, float, complex)):
        return [_SHORT.repr(obj)]
    if isinstance(obj, (str, bytes, bytearray, memoryview)):
        return _describe_text(obj)
    if isinstance(obj, (Mapping, list, tuple, set, frozenset, deque)):
        return _describe_container(obj)
    if callable(obj):
        return _describe_callable(obj)
    return [_SHORT.repr(obj)]


def describe(name: str, obj: Any, description: str | None = None) -> str:
    """``name: type: description`` and an indented, bounded summary of ``obj``."""
    header = f"{name}: {type_name(obj)}"
    if description:
        header += " - " + _cut(" ".join(description.split()), 300)
    try:
        body = _summary(obj)
    except Exception as exc:  # a recogniser tripped on a hostile object
        body = [f"<description failed: {_error_text(exc)}>"]
    return "\n".join([header, *("  " + _cut(line, 1000) for line in body)])


def build_manifest(
    items: Iterable[tuple[str, Any, str | None]],
    *,
    variables: Sequence[tuple[str, str]] = (),
    per_object_chars: int = 1500,
    total_chars: int = 12000,
    max_variables: int = _MAX_VARIABLES,
) -> str:
    """The text the prompt shows for the runtime: described objects, then the agent's variables.

    ``items`` are ``(name, object, description)``; each description is cut to
    ``per_object_chars`` and objects stop being described once ``total_chars`` would be passed
    (the rest are named). ``variables`` are ``(name, type name)`` pairs, at most
    ``max_variables`` shown. The result is at most about ``total_chars`` plus the variables line.
    """
    blocks: list[str] = []
    used = 0
    skipped: list[str] = []
    for name, obj, description in items:
        if skipped or used >= total_chars:
            skipped.append(name)
            continue
        text = _cut(describe(name, obj, description), per_object_chars)
        if used + len(text) > total_chars:
            skipped.append(name)
            continue
        blocks.append(text)
        used += len(text) + 1
    if not blocks and not skipped:
        blocks.append("(no objects injected)")
    if skipped:
        names = ", ".join(skipped[:30]) + (", ..." if len(skipped) > 30 else "")
        blocks.append(
            f"({len(skipped)} more objects not described to keep this short: {names}; "
            "inspect them with code)"
        )
    out = ["Objects in your namespace:", *blocks]
    if variables:
        shown = ", ".join(f"{n}: {t}" for n, t in variables[:max_variables])
        more = f", +{len(variables) - max_variables} more" if len(variables) > max_variables else ""
        out.append(_cut(f"Variables you created: {shown}{more}", 4000))
    return "\n".join(out)
