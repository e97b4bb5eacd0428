"""Dask collections and ``distributed.Client``: described from their metadata, never computed.

A Dask ``DataFrame``/``Series`` carries ``_meta`` (an empty pandas object with the right columns
and dtypes), ``npartitions`` and ``divisions``: all known without running a task. ``len()``,
``shape[0]`` and ``.head()`` would compute and are never called. An ``Array`` carries shape,
dtype and chunks. A ``Client`` is described from the scheduler identity it caches (refreshed by
its own heartbeat), so describing it sends no request to the scheduler.
"""

from __future__ import annotations

import itertools
from typing import Any

from ..runtime._manifest import _cut

__all__ = ["dask_array", "dask_client", "dask_frame"]

MAX_COLUMNS = 40


def dask_frame(frame: Any, budget: int) -> list[str]:
    meta = frame._meta  # empty pandas object: the schema, no data
    nparts = frame.npartitions
    known = "known" if frame.known_divisions else "unknown"
    lines = [f"dask, lazy: {nparts:,} partitions (divisions {known}); never computed here, "
             "call .compute() or .persist() to run"]
    if meta.ndim == 2:
        items = list(itertools.islice(meta.dtypes.items(), MAX_COLUMNS))
        cols = ", ".join(f"{_cut(str(n), 40)} ({t})" for n, t in items)
        more = f", +{meta.shape[1] - MAX_COLUMNS:,} more" if meta.shape[1] > MAX_COLUMNS else ""
        lines.append(_cut(f"columns ({meta.shape[1]}): {cols}{more}", max(80, budget // 2)))
    else:
        lines.append(f"series: name {meta.name!r}; dtype {meta.dtype}")
    lines.append(f"index: {type(meta.index).__name__} (dtype {meta.index.dtype})")
    return lines


def dask_array(arr: Any, budget: int) -> list[str]:
    chunks = tuple(c[0] if c else 0 for c in arr.chunks)
    return [
        f"dask array, lazy: shape {arr.shape}; dtype {arr.dtype}; chunk shape {chunks}; "
        f"{arr.npartitions:,} chunks; {_human(arr.nbytes)} if computed",
    ]


def dask_client(client: Any, budget: int) -> list[str]:
    address = getattr(client.scheduler, "address", None) or "?"
    info = getattr(client, "_scheduler_identity", None) or {}
    workers = info.get("workers", {}) or {}  # per-worker entries: often left out of the cache
    count = int(info.get("n_workers", len(workers)))
    per_worker = sum(int(w.get("nthreads", 0)) for w in workers.values())
    threads = int(info.get("total_threads", per_worker))
    memory = int(info.get("total_memory", 0) or 0) or sum(
        int(w.get("memory_limit", 0) or 0) for w in workers.values()
    )
    dashboard = getattr(client, "dashboard_link", None)
    lines = [f"scheduler: {address}; status: {client.status}"]
    lines.append(f"workers: {count}; threads: {threads}; memory: {_human(memory)} (as of the "
                 "client's last heartbeat)")
    if dashboard:
        lines.append(f"dashboard: {dashboard}")
    lines.append("collections computed with .compute() run on this cluster")
    return lines


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover
