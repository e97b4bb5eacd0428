"""Polars and Arrow, described from their schemas: nothing collected, scanned or copied.

* A Polars ``DataFrame``: ``shape``, the schema, ``head(3)`` (a slice: O(1) whatever the height).
* A ``LazyFrame``: ``collect_schema()`` resolves names and types from the plan without running
  it; the plan summary is the first lines of ``explain(optimized=False)``, which formats the plan
  and touches no data. It is never ``collect``-ed, so a plan over a terabyte costs what a plan
  over a kilobyte does.
* A PyArrow ``Table``/``RecordBatch``: ``num_rows`` (metadata), the schema, ``slice(0, 3)``.
* A ``pyarrow.dataset.Dataset``: the schema, the format, the partitioning and the first files.
  Rows are not counted: that reads every file's footer, a cost that grows with the file count.
"""

from __future__ import annotations

import itertools
from typing import Any

from ..runtime._manifest import _cut, _table

__all__ = ["arrow_dataset", "arrow_table", "polars_frame", "polars_lazy"]

MAX_COLUMNS = 40
SAMPLE_ROWS = 3
SAMPLE_COLUMNS = 12
MAX_FILES = 5


def schema_line(pairs: list[tuple[str, Any]], total: int, budget: int) -> str:
    """``columns (N): a (Int64), b (String), ..., +M more``, cut to half the ``budget``."""
    cols = [f"{_cut(str(n), 40)} ({t})" for n, t in pairs[:MAX_COLUMNS]]
    more = f", +{total - MAX_COLUMNS:,} more" if total > MAX_COLUMNS else ""
    return _cut(f"columns ({total:,}): " + ", ".join(cols) + more, max(80, budget // 2))


def _sample(columns: list[Any], rows: list[list[Any]], ncols: int) -> list[str]:
    text = _table(columns, list(range(len(rows))), rows)
    more = " (first columns)" if ncols > SAMPLE_COLUMNS else ""
    return [f"first {len(rows)} rows{more}:", *("  " + line for line in text.splitlines())]


def polars_frame(df: Any, budget: int) -> list[str]:
    height, width = df.shape
    schema = df.schema  # an OrderedDict-like; cheap, it is the frame's metadata
    pairs = list(itertools.islice(schema.items(), MAX_COLUMNS))
    lines = [f"shape: {height:,} rows x {width:,} columns", schema_line(pairs, width, budget)]
    if height:
        head = df.head(SAMPLE_ROWS).select(df.columns[:SAMPLE_COLUMNS])
        rows = [list(r) for r in head.rows()]
        lines += _sample(head.columns, rows, width)
    return lines


def polars_lazy(lf: Any, budget: int) -> list[str]:
    schema = lf.collect_schema()  # resolved from the plan; nothing runs
    pairs = list(itertools.islice(schema.items(), MAX_COLUMNS))
    lines = ["lazy: never collected here; call .collect() (or .head(n).collect()) to run it",
             schema_line(pairs, len(schema), budget)]
    plan = lf.explain(optimized=False).splitlines()
    shown = [_cut(line.rstrip(), 120) for line in plan[:8]]
    more = [f"... +{len(plan) - 8} more plan lines"] if len(plan) > 8 else []
    return [*lines, "plan:", *("  " + line for line in shown + more)]


def arrow_table(table: Any, budget: int) -> list[str]:
    schema = table.schema
    n = len(schema.names)
    pairs = [(f.name, f.type) for f in itertools.islice(schema, MAX_COLUMNS)]
    lines = [f"rows: {table.num_rows:,}; columns: {n:,}; {_bytes(table.nbytes)}",
             schema_line(pairs, n, budget)]
    if table.num_rows:
        head = table.slice(0, SAMPLE_ROWS).select(list(range(min(n, SAMPLE_COLUMNS))))
        data = head.to_pydict()  # at most 3 x 12 values
        names = list(data)
        rows = [[data[c][i] for c in names] for i in range(head.num_rows)]
        lines += _sample(names, rows, n)
    return lines


def arrow_dataset(dataset: Any, budget: int) -> list[str]:
    schema = dataset.schema
    n = len(schema.names)
    pairs = [(f.name, f.type) for f in itertools.islice(schema, MAX_COLUMNS)]
    lines = [schema_line(pairs, n, budget)]
    files = getattr(dataset, "files", None)  # FileSystemDataset: the list it was built from
    if files is not None:
        fmt = getattr(getattr(dataset, "format", None), "default_extname", "") or type(
            getattr(dataset, "format", None)
        ).__name__
        lines.append(f"files: {len(files):,} ({fmt}); first: " + ", ".join(
            _cut(str(f), 80) for f in files[:MAX_FILES]
        ))
    part = getattr(dataset, "partitioning", None)
    if part is not None:
        pschema = part.schema
        lines.append(f"partitioning: {type(part).__name__} on " + ", ".join(
            f"{f.name} ({f.type})" for f in pschema
        ))
    lines.append("rows: not counted (that would read every file's footer); count with code")
    return lines


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover
