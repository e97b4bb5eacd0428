"""The kernel's loader for bytes the confined worker sends: data classes only, never code.

``pickle.loads`` runs whatever callable the stream names, so unpickling the worker's bytes with it
would hand confined code a way to run code in the kernel. This loader resolves only the names on
an allow-list: plain containers and scalars, ``datetime``/``decimal``/``fractions``/``uuid``/
``collections`` types, numpy's array and dtype reconstruction, and pandas' own classes and
reconstruction helpers (frame, series, indexes, internals, arrays, dtypes, tslibs: what a
DataFrame, Series, Index or Categorical pickles through), and pyarrow's array reconstruction
(pandas 3 stores strings in Arrow arrays when pyarrow is installed). Anything else (a function
or class the agent defined, a generator, an arbitrary library object) is refused with
:class:`Refused`, and the caller keeps a :class:`~cave.strict._sharing.WorkerOnly` placeholder
for it instead.

What this does not claim: allowed constructors run with arguments the worker chose (a numpy
array of any shape, a DataFrame with any columns), and a shared buffer's bytes can change under
the kernel while the worker runs. Neither runs code the worker wrote.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from typing import Any

__all__ = ["Refused", "safe_loads"]


class Refused(pickle.UnpicklingError):
    """The stream named something the kernel does not load from confined code."""


_BUILTINS = frozenset({
    "list", "dict", "set", "frozenset", "tuple", "bytearray", "bytes", "complex", "slice",
    "range", "int", "float", "str", "bool", "object", "NoneType", "Ellipsis", "NotImplemented",
})
_EXACT = {
    "copyreg": {"_reconstructor", "__newobj__", "__newobj_ex__"},
    "collections": {"OrderedDict", "defaultdict", "deque", "Counter"},
    "datetime": {"datetime", "date", "time", "timedelta", "timezone", "tzinfo"},
    "decimal": {"Decimal"},
    "fractions": {"Fraction"},
    "uuid": {"UUID", "SafeUUID"},
    "zoneinfo": {"ZoneInfo"},
    "numpy": {"dtype", "ndarray", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
              "uint64", "float16", "float32", "float64", "complex64", "complex128", "bool_",
              "datetime64", "timedelta64", "str_", "bytes_", "void", "longdouble", "clongdouble"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},
    "numpy._core.numeric": {"_frombuffer"},
    "numpy.dtypes": None,  # dtype classes only (checked below)
    "pandas._libs.internals": {"_unpickle_block", "BlockPlacement"},
    "pandas._libs.tslibs.timestamps": {"_unpickle_timestamp", "Timestamp"},
    "pandas._libs.tslibs.timedeltas": {"_timedelta_unpickle", "Timedelta"},
    "pandas._libs.tslibs.offsets": None,
    "pandas._libs.tslibs.nattype": {"_nat_unpickle", "__nat_unpickle", "NaTType"},
    "pandas._libs.tslibs.period": {"Period"},
    "pandas._libs.arrays": {"NDArrayBacked", "__pyx_unpickle_NDArrayBacked"},
    "pandas.arrays": None,
    # pandas 3 keeps string columns (and column labels) in Arrow arrays when pyarrow is installed
    "pyarrow.lib": {"_restore_array", "py_buffer", "type_for_alias", "chunked_array",
                    "ChunkedArray"},
    "pandas": {"DataFrame", "Series", "Index", "RangeIndex", "MultiIndex", "DatetimeIndex",
               "TimedeltaIndex", "PeriodIndex", "CategoricalIndex", "IntervalIndex", "Categorical",
               "CategoricalDtype", "DatetimeTZDtype", "PeriodDtype", "IntervalDtype",
               "StringDtype", "BooleanDtype", "Int8Dtype", "Int16Dtype", "Int32Dtype",
               "Int64Dtype", "UInt8Dtype", "UInt16Dtype", "UInt32Dtype", "UInt64Dtype",
               "Float32Dtype", "Float64Dtype", "NA", "NaT", "Timestamp", "Timedelta", "Period",
               "Interval"},
}
_PANDAS_PREFIXES = ("pandas.core.frame", "pandas.core.series", "pandas.core.indexes.",
                    "pandas.core.internals.", "pandas.core.arrays.", "pandas.core.dtypes.")
_PANDAS_FUNCS = frozenset({"_new_Index", "_new_DatetimeIndex", "_new_PeriodIndex",
                           "_unpickle_series_compat", "_unpickle_frame_compat",
                           "new_block", "_dt_index_cmp", "_new_IntervalIndex"})


def _allowed(module: str, name: str) -> bool:
    if module == "builtins":
        return name in _BUILTINS
    if module in _EXACT:
        names = _EXACT[module]
        return (names is None and name[:1].isupper()) or (names is not None and name in names)
    if module.startswith(_PANDAS_PREFIXES):
        return name[:1].isupper() or name in _PANDAS_FUNCS
    return False


class _Loader(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if "." in name or not _allowed(module, name):
            raise Refused(f"{module}.{name} is not loaded from confined code")
        return super().find_class(module, name)


def safe_loads(data: bytes, buffers: Iterable[Any] = ()) -> Any:
    """Unpickle ``data`` from the worker, resolving only allow-listed names."""
    return _Loader(io.BytesIO(data), buffers=buffers).load()
