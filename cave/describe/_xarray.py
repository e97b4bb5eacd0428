"""xarray ``Dataset``/``DataArray``: dims, coords, variables and attrs, from metadata only.

Sizes, dtypes and names come from the variables' headers; no value is loaded (a Dataset opened
lazily from netCDF or Zarr stays lazy, and a Dask-backed one is never computed).
"""

from __future__ import annotations

import itertools
from typing import Any

from ..runtime._manifest import _cut

__all__ = ["xarray_dataarray", "xarray_dataset"]

MAX_ITEMS = 20


def _dims(sizes: Any) -> str:
    return ", ".join(f"{d}: {n:,}" for d, n in itertools.islice(sizes.items(), MAX_ITEMS))


def _vars(mapping: Any) -> str:
    items = list(itertools.islice(mapping.items(), MAX_ITEMS))
    text = ", ".join(f"{n} ({', '.join(map(str, v.dims))}) {v.dtype}" for n, v in items)
    more = f", +{len(mapping) - MAX_ITEMS} more" if len(mapping) > MAX_ITEMS else ""
    return text + more


def _attrs(attrs: Any) -> str:
    items = list(itertools.islice(attrs.items(), 8))
    return ", ".join(f"{k}={_cut(str(v), 40)}" for k, v in items)


def xarray_dataset(ds: Any, budget: int) -> list[str]:
    lines = [f"dims: {_dims(ds.sizes)}", _cut(f"coords: {_vars(ds.coords)}", budget // 3),
             _cut(f"data variables: {_vars(ds.data_vars)}", budget // 3)]
    if ds.attrs:
        lines.append(_cut(f"attrs: {_attrs(ds.attrs)}", 300))
    return lines


def xarray_dataarray(da: Any, budget: int) -> list[str]:
    lines = [f"name: {da.name!r}; dims: {_dims(da.sizes)}; dtype: {da.dtype}",
             _cut(f"coords: {_vars(da.coords)}", budget // 3)]
    if da.attrs:
        lines.append(_cut(f"attrs: {_attrs(da.attrs)}", 300))
    return lines
