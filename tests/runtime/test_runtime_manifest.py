"""The manifest: useful summaries, bounded size, and a cost that never touches the data."""

from __future__ import annotations

import collections
import math
import tracemalloc
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest

from cave.runtime._manifest import bounded_repr, build_manifest, describe, type_name


class Touched(AssertionError):
    """Raised by test objects when the manifest reads their data."""


def test_dataframe_summary() -> None:
    df = pd.DataFrame(
        {"price": [1.5, 2.5, 3.5, 4.5], "city": ["Oslo", "Rome", "Lima", "Kyiv"], "n": [1, 2, 3, 4]}
    )
    text = describe("sales", df, "one row per shop")
    assert text.startswith("sales: pandas.DataFrame - one row per shop\n")
    assert "shape: 4 rows x 3 columns; index: RangeIndex" in text
    assert "columns: price (float64), city (" in text and "n (int64)" in text
    assert "first 3 rows:" in text
    assert "Oslo" in text and "Lima" in text and "Kyiv" not in text  # three rows, not four


def test_wide_dataframe_lists_40_columns_then_counts() -> None:
    df = pd.DataFrame(np.zeros((2, 100)), columns=[f"col{i}" for i in range(100)])
    text = describe("wide", df)
    assert "col39 (float64)" in text and "col40 (" not in text
    assert "+60 more" in text
    assert len(text) < 1500
    assert max(len(line) for line in text.splitlines()) <= 1002


def test_ten_million_rows_cost_the_same_category_as_ten() -> None:
    big = pd.DataFrame(np.zeros((10_000_000, 3)), columns=["a", "b", "c"])
    small = pd.DataFrame(np.zeros((10, 3)), columns=["a", "b", "c"])
    big_text, small_text = describe("df", big), describe("df", small)
    assert "10,000,000 rows" in big_text
    assert abs(len(big_text) - len(small_text)) < 40  # only the row count's digits differ
    tracemalloc.start()
    try:
        describe("df", big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # the frame is 240 MB; a copy or a full scan would show here


class HostileFrame(pd.DataFrame):
    """A DataFrame whose whole-data accessors explode: the manifest must not need them."""

    @property
    def _constructor(self) -> type:
        return HostileFrame

    def __len__(self) -> int:
        raise Touched("__len__")

    def __iter__(self) -> Any:
        raise Touched("__iter__")

    @property
    def values(self) -> Any:  # type: ignore[override]
        raise Touched("values")

    def to_numpy(self, *args: Any, **kwargs: Any) -> Any:
        raise Touched("to_numpy")

    def memory_usage(self, *args: Any, **kwargs: Any) -> Any:
        raise Touched("memory_usage")

    def info(self, *args: Any, **kwargs: Any) -> Any:
        raise Touched("info")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise Touched("__array__")


def test_dataframe_described_without_len_values_iter_or_memory_usage() -> None:
    df = HostileFrame({"a": [1.25, 2.25, 3.25, 4.25], "b": ["p", "q", "r", "s"]})
    text = describe("h", df)
    assert "Touched" not in text and "unavailable" not in text
    assert "shape: 4 rows x 2 columns" in text
    assert "a (float64)" in text
    assert "1.25" in text and "3.25" in text and "4.25" not in text


def test_series_summary() -> None:
    s = pd.Series(range(1000), name="ids")
    text = describe("ids", s)
    assert "length: 1,000; dtype: int64; name: 'ids'" in text
    assert "first values:" in text and "999" not in text


def test_ndarray_summary_reads_only_a_few_elements() -> None:
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    text = describe("arr", arr)
    assert "shape: (3, 4); dtype: int32; 48 bytes" in text
    assert "first values: [0, 1, 2, 3, 4, 5]" in text
    big = np.zeros((4000, 3000)).T  # 96 MB, not contiguous: ravel() would copy all of it
    tracemalloc.start()
    try:
        text = describe("big", big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "shape: (3000, 4000); dtype: float64; 91.6 MB" in text
    assert peak < 1_000_000


class LazyArray:
    """A duck-typed array (like a dask or torch tensor) whose data must not be read."""

    shape = (10**12, 3)
    dtype = "float32"

    def __len__(self) -> int:
        raise Touched("__len__")

    def __iter__(self) -> Any:
        raise Touched("__iter__")

    def __array__(self, *args: Any) -> Any:
        raise Touched("__array__")

    def __repr__(self) -> str:
        raise Touched("__repr__")


def test_duck_typed_array_uses_metadata_only() -> None:
    text = describe("lazy", LazyArray())
    assert "shape: (1000000000000, 3); dtype: float32" in text
    assert "Touched" not in text


def test_containers_show_length_and_first_element_types() -> None:
    text = describe("xs", [1, "a", 2.0] + [0] * 1_000_000)
    assert "length: 1,000,003" in text
    assert "first element types: int, str, float, int, int" in text
    text = describe("m", {"k1": 1, "k2": "v", **{f"x{i}": i for i in range(1000)}})
    assert "length: 1,002" in text and "first keys: 'k1', 'k2'" in text
    assert "value types: int, str, int" in text
    assert "length: 3" in describe("t", (1, 2, 3))
    assert "length: 2" in describe("q", collections.deque([1, 2]))


class Ordered:
    """Elements that count comparisons: sorting a container to describe it would show up."""

    compared = 0

    def __lt__(self, other: object) -> bool:
        Ordered.compared += 1
        return id(self) < id(other)

    def __repr__(self) -> str:
        return "O"


def test_sets_and_dicts_are_never_sorted_or_walked() -> None:
    Ordered.compared = 0
    big_set = {Ordered() for _ in range(20_000)}
    big_dict = {Ordered(): i for i in range(20_000)}
    for obj in (big_set, frozenset(big_set), big_dict):
        assert len(describe("x", obj)) < 1500
        assert len(bounded_repr(obj)) < 2000
    assert Ordered.compared == 0  # reprlib.Repr would sort all 20,000 elements


def test_container_subclasses_are_bounded() -> None:
    counter = collections.Counter({f"w{i}": i for i in range(100_000)})
    text = bounded_repr(counter, 500)
    assert text.startswith("Counter({") and len(text) <= 500
    ordered = collections.OrderedDict((i, i) for i in range(100_000))
    assert bounded_repr(ordered).startswith("OrderedDict({0: 0, 1: 1")

    class Point(NamedTuple):
        x: int
        y: list[int]

    assert bounded_repr(Point(1, list(range(10**6))), 300).startswith("Point(x=1, y=[0, 1, 2")
    assert len(bounded_repr(Point(1, list(range(10**6))), 300)) <= 300


def test_callables_and_classes() -> None:
    def load(path: str, *, limit: int = 10) -> list[str]:
        """Load lines from a file.

        More detail that the manifest does not need.
        """
        return []

    class Model:
        """A tiny model.

        Long story.
        """

        def __init__(self, width: int, depth: int = 2) -> None:
            pass

    assert describe("load", load).splitlines()[1] == (
        "  test_callables_and_classes.<locals>.load(path: str, *, limit: int = 10) -> list[str]: "
        "Load lines from a file."
    )
    text = describe("Model", Model)
    assert "class test_callables_and_classes.<locals>.Model(width: int, depth: int = 2)" in text
    assert "A tiny model." in text and "Long story" not in text
    assert "len(obj, /)" in describe("len", len)
    assert describe("math", math).splitlines()[1] == "  module math"


def test_scalars_and_text() -> None:
    assert describe("n", 3).splitlines()[1] == "  3"
    assert describe("none", None).splitlines()[1] == "  None"
    assert describe("flag", True).splitlines()[1] == "  True"
    assert "<int with" in describe("huge", 10**100_000)
    text = describe("s", "x" * 1_000_000)
    assert "length: 1,000,000" in text and len(text) < 400
    text = describe("b", b"\x00" * 1_000_000)
    assert "length: 1,000,000" in text and len(text) < 1000


class BadRepr:
    def __repr__(self) -> str:
        raise ValueError("boom")


class HugeRepr:
    def __repr__(self) -> str:
        return "z" * 10_000_000


class NoAttributes:
    """Every attribute lookup fails, including the ones duck typing would try."""

    def __getattribute__(self, name: str) -> Any:
        raise Touched(name)


def test_weird_objects_never_break_the_manifest() -> None:
    assert "<repr failed: ValueError: boom>" in describe("bad", BadRepr())
    assert len(describe("huge", HugeRepr())) < 400
    text = describe("odd", NoAttributes())
    assert text.startswith("odd: test_runtime_manifest.NoAttributes")
    assert "failed" in text or "unavailable" in text

    class BadLen(list):  # type: ignore[type-arg]
        def __len__(self) -> int:
            raise RuntimeError("no len")

    assert "unavailable: RuntimeError: no len" in describe("bl", BadLen([1]))
    assert bounded_repr(BadLen([1])).startswith("<repr failed")


def test_each_object_and_the_total_are_bounded() -> None:
    items = [(f"df{i}", pd.DataFrame(np.zeros((3, 60))), "x" * 2000) for i in range(40)]
    text = build_manifest(items, per_object_chars=1500, total_chars=12000)
    described, _, rest = text.partition("\n(")
    blocks = described.split("\ndf")
    assert len(blocks) > 5 and all(len(block) <= 1502 for block in blocks)
    assert len(text) <= 12000 + 400
    skipped = int(rest.split(" ", 1)[0])
    assert rest.split(" ", 1)[1].startswith("more objects not described")
    assert skipped + len(blocks) - 1 == 40  # blocks[0] is the title
    assert rest.endswith("inspect them with code)") and len(rest) < 400


def test_variables_are_listed_and_bounded() -> None:
    variables = [(f"v{i}", "int") for i in range(120)]
    text = build_manifest([], variables=variables)
    assert "Variables you created: v0: int, v1: int" in text
    assert "v49: int" in text and "v50: int" not in text and "+70 more" in text


def test_type_name() -> None:
    assert type_name(pd.DataFrame()) == "pandas.DataFrame"
    assert type_name(np.zeros(1)) == "numpy.ndarray"
    assert type_name({}) == "dict"
    assert type_name(collections.OrderedDict()) == "collections.OrderedDict"


@pytest.mark.parametrize("n", [0, 1])
def test_empty_containers(n: int) -> None:
    for obj in ([0] * n, {0: 0} if n else {}, set(range(n)), "a" * n):
        assert f"length: {n}" in describe("e", obj)
