"""The describer protocol: register by class or by name, ``__cave_describe__``, bounds, failures."""

from __future__ import annotations

import sys
from typing import Any

import pytest

import cave.describe
from cave.runtime._manifest import build_manifest, describe


class Gadget:
    def __init__(self, n: int) -> None:
        self.n = n


class SelfDescribing:
    def __cave_describe__(self, budget: int) -> str:
        return f"self-described within {budget} chars"


class Child(SelfDescribing):
    pass


def test_register_by_class_and_by_short_or_full_name() -> None:
    cave.describe.register(Gadget, lambda g, budget: [f"gadget n={g.n}"])
    try:
        assert "gadget n=3" in describe("g", Gadget(3))
    finally:
        cave.describe.unregister(Gadget)
    assert "gadget n=" not in describe("g", Gadget(3))
    for name in (f"{__name__}.Gadget", f"{__name__.split('.')[0]}.Gadget"):
        cave.describe.register(name, lambda g, budget: f"by name n={g.n}")
        try:
            assert "by name n=4" in describe("g", Gadget(4)), name
        finally:
            cave.describe.unregister(name)


def test_registering_by_name_imports_nothing() -> None:
    assert "not_a_real_package_xyz" not in sys.modules
    cave.describe.register("not_a_real_package_xyz.Frame", "not_a_real_package_xyz:describe")
    try:
        assert "not_a_real_package_xyz" not in sys.modules
        assert describe("x", 1) == "x: int\n  1"  # lookups for other types never load it
    finally:
        cave.describe.unregister("not_a_real_package_xyz.Frame")


def test_builtin_data_describers_load_nothing_until_needed() -> None:
    import subprocess

    code = (
        "import sys, cave, cave.describe, cave.checkpoint, cave.runtime._manifest as m\n"
        "m.build_manifest([('a', 1, None), ('b', [1, 2], None)])\n"
        "heavy = {'polars', 'pyarrow', 'duckdb', 'dask', 'distributed', 'xarray', 'sqlalchemy'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_cave_describe_method_and_its_subclasses() -> None:
    assert "self-described within 1200 chars" in describe("s", SelfDescribing())
    assert "self-described" in describe("c", Child())


def test_registered_describer_beats_an_inherited_method() -> None:
    cave.describe.register(Child, lambda obj, budget: "registered for the child")
    try:
        assert "registered for the child" in describe("c", Child())
        assert "self-described" in describe("s", SelfDescribing())
    finally:
        cave.describe.unregister(Child)


def test_output_is_bounded_whatever_the_describer_returns() -> None:
    cave.describe.register(Gadget, lambda g, budget: ["x" * 10_000] * 1000)
    try:
        text = describe("g", Gadget(1))
        assert len(text) < 2000
        assert "more lines cut" in text
        manifest = build_manifest([(f"g{i}", Gadget(i), None) for i in range(100)])
        assert len(manifest) < 14_000
    finally:
        cave.describe.unregister(Gadget)


def test_a_failing_describer_is_a_line_not_an_exception() -> None:
    def boom(obj: Any, budget: int) -> str:
        raise RuntimeError("broken describer")

    cave.describe.register(Gadget, boom)
    try:
        assert "broken describer" in describe("g", Gadget(1))
    finally:
        cave.describe.unregister(Gadget)


def test_bad_registrations_say_how_to_fix_them() -> None:
    with pytest.raises(TypeError, match="qualified name"):
        cave.describe.register(42, lambda o, b: "")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="module:function"):
        cave.describe.register(Gadget, "no colon here")
