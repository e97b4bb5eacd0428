"""Pickling one namespace entry: cloudpickle, protocol 5, out-of-band buffers, references by name.

Each entry is pickled on its own, so one bad object cannot spoil the rest. Large contiguous
buffers (NumPy arrays, pandas blocks) leave the pickle stream as out-of-band ``PickleBuffer``s:
they are hashed and written straight from the object's memory, never copied into the pickle,
and come back as arrays over the blob's memory.

Two kinds of reference are written as persistent ids instead of by value:

* the namespace dict itself, wherever it appears: functions and classes defined by agent code get
  the restored namespace as their ``__globals__`` (not a frozen copy of the globals they used);
* another top-level object of the namespace: ``b = a`` inside a container, or an object that
  holds a DataFrame also bound to a name, stays one object after restore instead of two copies.

Payload layout (the bytes a blob's SHA-256 covers; every offset below is 64-byte aligned)::

    b"CVP1" | u32 buffer count n | u64 in-band length | n x u64 buffer lengths | pad
    in-band pickle | pad | buffer 0 | pad | ... | buffer n-1
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._reducers import reduce_registered

PROTOCOL = 5
MAGIC = b"CVP1"
ALIGN = 64
_ZEROS = bytes(ALIGN)


def _pad(n: int) -> int:
    return -n % ALIGN


@dataclass
class Pickled:
    """One entry's pickle: in-band bytes, out-of-band buffers, and the names it refers to."""

    inband: bytes
    buffers: list[memoryview]
    refs: set[str] = field(default_factory=set)

    def parts(self) -> list[bytes | memoryview]:
        """The payload as a list of byte chunks, without copying the buffers."""
        n = len(self.buffers)
        head = MAGIC + struct.pack(
            f"<IQ{n}Q", n, len(self.inband), *(b.nbytes for b in self.buffers)
        )
        out: list[bytes | memoryview] = [head + _ZEROS[: _pad(len(head))], self.inband]
        last = len(self.inband)
        for buf in self.buffers:
            if _pad(last):
                out.append(_ZEROS[: _pad(last)])
            out.append(buf)
            last = buf.nbytes
        return out

    @property
    def size(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in self.parts())


def _cloudpickler() -> type:
    import cloudpickle

    class _Pickler(cloudpickle.Pickler):
        def __init__(
            self,
            file: io.BytesIO,
            buffer_callback: Callable[[pickle.PickleBuffer], None],
            namespace: Mapping[str, Any] | None,
            names_by_id: Mapping[int, str],
            own_ids: set[int],
        ) -> None:
            super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)
            self._ns = namespace
            self._names_by_id = names_by_id
            self._own_ids = own_ids
            self.refs: set[str] = set()

        def persistent_id(self, obj: Any) -> Any:
            if obj is self._ns:
                return ("ns",)
            i = id(obj)
            name = self._names_by_id.get(i)
            if name is not None and i not in self._own_ids:
                self.refs.add(name)
                return ("ref", name)
            return None

        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is memoryview:  # cloudpickle's own reducer turns it into bytes
                return _reduce_memoryview(obj)
            reduced = reduce_registered(obj)
            if reduced is not None:
                return reduced
            return super().reducer_override(obj)

        def _dynamic_function_reduce(self, func: Any) -> Any:
            reduced = super()._dynamic_function_reduce(func)
            if self._ns is None or func.__globals__ is not self._ns:
                return reduced
            # Defined by agent code: its globals are the namespace being checkpointed. Refer to
            # it instead of copying the globals the function reads (a stale copy of each).
            make, newargs, (state, slotstate), listitems, dictitems, setter = reduced
            slotstate = dict(slotstate, __globals__={})
            return (
                make,
                (newargs[0], self._ns, *newargs[2:]),
                (state, slotstate),
                listitems,
                dictitems,
                setter,
            )

    return _Pickler


def _reduce_memoryview(view: memoryview) -> Any:
    """A memoryview comes back as a memoryview (format, shape, read-only flag kept): over its
    exporter when it views all of it (a NumPy array stays one object, and large ones go out of
    band), else over a copy of its bytes."""
    if _views_all_of(view):
        return _rebuild_memoryview, (view.obj, None, None, view.readonly)
    try:
        memoryview(b"").cast(view.format)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise TypeError(
            f"a memoryview with format {view.format!r} over part of its exporter cannot be "
            "rebuilt; checkpoint the exporting object (for example the NumPy array) instead"
        ) from None
    return _rebuild_memoryview, (view.tobytes(), view.format, view.shape, view.readonly)


def _views_all_of(view: memoryview) -> bool:
    """Whether ``view`` is the exporter's whole buffer as the exporter presents it (a view with
    the same format, shape and strides cannot start anywhere else)."""
    try:
        whole = memoryview(view.obj)
    except TypeError:
        return False
    with whole:
        return (whole.format, whole.shape, whole.strides, whole.readonly) == (
            view.format, view.shape, view.strides, view.readonly,
        )  # fmt: skip


def _rebuild_memoryview(
    data: Any, fmt: str | None, shape: tuple[int, ...] | None, readonly: bool
) -> memoryview:
    view = memoryview(data)
    if fmt is None:
        return view.toreadonly() if readonly and not view.readonly else view
    if not readonly:
        view = memoryview(bytearray(view))  # writable, and not the blob's memory
    return view.cast(fmt, shape)  # type: ignore[call-overload]


_PICKLER: type | None = None


def dump(
    obj: Any,
    *,
    namespace: Mapping[str, Any] | None = None,
    names_by_id: Mapping[int, str] | None = None,
    own_ids: Iterable[int] = (),
) -> Pickled:
    """Pickle ``obj``; raises whatever the pickler raises for an unpicklable object."""
    global _PICKLER
    if _PICKLER is None:
        _PICKLER = _cloudpickler()
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    pickler = _PICKLER(out, buffers.append, namespace, names_by_id or {}, set(own_ids))
    pickler.dump(obj)
    return Pickled(out.getvalue(), [b.raw() for b in buffers], set(pickler.refs))


class PayloadError(ValueError):
    """A payload whose layout does not parse (only possible for data we did not write)."""


def split(payload: memoryview) -> tuple[memoryview, list[memoryview]]:
    """In-band bytes and buffer views of a payload, checking every length against its size."""
    if payload.nbytes < 16 or bytes(payload[:4]) != MAGIC:
        raise PayloadError("not a Cave payload")
    n, inband_len = struct.unpack_from("<IQ", payload, 4)
    head = 16 + 8 * n
    if head > payload.nbytes:
        raise PayloadError("truncated payload header")
    lengths = struct.unpack_from(f"<{n}Q", payload, 16)
    pos = head + _pad(head)
    spans = [(pos, inband_len)]
    pos += inband_len
    last = inband_len
    for length in lengths:
        pos += _pad(last)
        spans.append((pos, length))
        pos += length
        last = length
    if pos != payload.nbytes:
        raise PayloadError(f"payload is {payload.nbytes} bytes, its header describes {pos}")
    views = [payload[start : start + length] for start, length in spans]
    return views[0], views[1:]


def load(
    payload: memoryview,
    *,
    namespace: Any = None,
    resolve: Callable[[str], Any] | None = None,
) -> Any:
    """Unpickle a verified payload. Buffers become views of ``payload`` (no copy)."""
    inband, buffers = split(payload)

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            if pid == ("ns",):
                return namespace
            if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "ref" and resolve:
                return resolve(pid[1])
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")

    return _Unpickler(io.BytesIO(inband), buffers=buffers).load()
