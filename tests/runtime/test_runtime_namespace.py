"""AgentRuntime: identity of injected objects, retrieve/update/remove, names, primitives."""

from __future__ import annotations

import builtins
import time

import pytest

from cave._errors import NameNotFound, RuntimeStateError, TypeChangeRefused
from cave.runtime._namespace import AgentRuntime, InjectedInfo


def test_inject_binds_the_object_itself() -> None:
    rt = AgentRuntime()
    data = [1, 2, 3]
    rt.inject("data", data, "three numbers")
    assert rt.namespace["data"] is data
    assert rt.retrieve("data") is data
    result = rt.run("seen = id(data)\ndata.append(4)", echo=False)
    assert result.error is None
    assert rt.retrieve("seen") == id(data)
    assert data == [1, 2, 3, 4]  # the user sees the agent's change: no copy anywhere


def test_namespace_shape() -> None:
    rt = AgentRuntime()
    assert rt.namespace["__name__"] == "__cave_agent__"
    assert rt.namespace["__builtins__"] is builtins
    rt.run("class K: pass\nmod = K.__module__", echo=False)
    assert rt.retrieve("mod") == "__cave_agent__"


def test_injected_metadata_and_agent_deletion() -> None:
    rt = AgentRuntime()
    before = time.time()
    rt.inject("a", 1, "first")
    rt.inject("b", 2)
    info = rt.injected["a"]
    assert isinstance(info, InjectedInfo)
    assert info.description == "first" and before <= info.injected_at <= time.time()
    assert list(rt.injected) == ["a", "b"]
    rt.run("del b", echo=False)
    assert list(rt.injected) == ["a"]
    with pytest.raises(NameNotFound):
        rt.retrieve("b")


def test_retrieve_agent_made_and_missing() -> None:
    rt = AgentRuntime()
    rt.inject("x", 1)
    rt.run("total = x + 41", echo=False)
    assert rt.retrieve("total") == 42
    with pytest.raises(NameNotFound) as err:
        rt.retrieve("nope")
    assert isinstance(err.value, KeyError)
    assert err.value.name == "nope"
    assert "total" in str(err.value) and "x" in str(err.value) and "inject" in str(err.value)
    for hidden in ("__builtins__", "__name__", "exit"):
        with pytest.raises(NameNotFound):
            rt.retrieve(hidden)


def test_update_same_type_refuses_type_change_unless_forced() -> None:
    rt = AgentRuntime()
    rt.inject("n", 1)
    rt.update("n", 2)
    assert rt.retrieve("n") == 2
    with pytest.raises(TypeChangeRefused) as err:
        rt.update("n", "two")
    assert err.value.old is int and err.value.new is str
    assert "force=True" in str(err.value)
    assert rt.retrieve("n") == 2
    rt.update("n", "two", force=True)
    assert rt.retrieve("n") == "two"
    rt.run("made = [1]", echo=False)
    rt.update("made", [2])  # agent-made names can be updated too
    assert rt.retrieve("made") == [2]
    with pytest.raises(NameNotFound):
        rt.update("absent", 1)


def test_remove() -> None:
    rt = AgentRuntime()
    rt.inject("gone", object())
    rt.remove("gone")
    assert "gone" not in rt.namespace and "gone" not in rt.injected
    with pytest.raises(NameNotFound):
        rt.remove("gone")
    result = rt.run("gone", echo=False)
    assert result.error is not None and "NameError" in result.error


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("1abc", "identifier"),
        ("a-b", "identifier"),
        ("", "identifier"),
        (3, "identifier"),
        ("class", "keyword"),
        ("lambda", "keyword"),
        ("__dunder__", "dunder"),
        ("exit", "reserved"),
        ("quit", "reserved"),
    ],
)
def test_bad_names_are_refused_with_a_fix(name: object, fix: str) -> None:
    rt = AgentRuntime()
    with pytest.raises(RuntimeStateError) as err:
        rt.inject(name, 1)  # type: ignore[arg-type]
    assert fix in str(err.value)
    assert rt.namespace.get(name) != 1  # type: ignore[call-overload]


def test_primitive_names_cannot_be_injected_updated_or_removed() -> None:
    rt = AgentRuntime()
    rt.add_primitive("fs", object())
    for call in (
        lambda: rt.inject("fs", 1),
        lambda: rt.update("fs", 1, force=True),
        lambda: rt.remove("fs"),
    ):
        with pytest.raises(RuntimeStateError) as err:
            call()
        assert "primitive" in str(err.value)
    rt.inject("data", 1)
    with pytest.raises(RuntimeStateError):
        rt.add_primitive("data", object())


def test_primitives_are_rebound_before_each_run() -> None:
    rt = AgentRuntime()
    fs = object()
    rt.add_primitive("fs", fs)
    assert rt.primitives == {"fs": fs}
    assert rt.run("fs = 'mine'\nseen = fs", echo=False).error is None
    assert rt.retrieve("seen") == "mine"  # the agent may shadow it within a run ...
    assert rt.run("again = fs", echo=False).error is None
    assert rt.retrieve("again") is fs  # ... but the next run has the primitive back
    assert rt.run("del fs", echo=False).error is None
    assert rt.run("third = fs", echo=False).error is None
    assert rt.retrieve("third") is fs


def test_agent_variables_lists_only_what_the_agent_made() -> None:
    rt = AgentRuntime()
    rt.inject("given", 1)
    rt.add_primitive("fs", object())
    rt.run(
        "import json\nx = 1\nname = 'a'\ndef helper(): pass\n__hidden__ = 2\n_private = 3",
        echo=False,
    )
    assert rt.agent_variables() == [
        ("x", "int"),
        ("name", "str"),
        ("helper", "function"),
        ("_private", "int"),
    ]


def test_safe_exit_survives_deletion_and_is_hidden() -> None:
    rt = AgentRuntime()
    rt.run("del exit", echo=False)
    result = rt.run("exit(4)", echo=False)
    assert result.error is not None and "SystemExit: 4" in result.error
    assert "exit" not in dict(rt.agent_variables())


def test_manifest_has_descriptions_and_variables() -> None:
    rt = AgentRuntime()
    rt.inject("sales", {"q1": 10}, "quarterly sales")
    rt.run("ratio = 0.5", echo=False)
    text = rt.manifest()
    assert "sales: dict - quarterly sales" in text
    assert "ratio: float" in text
    assert AgentRuntime().manifest().endswith("(no objects injected)")


def test_runtime_never_imports_pandas_numpy_or_ipython() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cave.runtime._namespace import AgentRuntime\n"
        "rt = AgentRuntime()\n"
        "rt.inject('xs', [1, 2])\n"
        "rt.manifest()\n"
        "r = rt.run('print(sum(xs))\\nxs', timeout=5)\n"
        "assert r.output == '3\\n' and r.value_repr == '[1, 2]', r\n"
        "print(sorted(m for m in ('pandas', 'numpy', 'IPython') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1] == "[]"


def test_agent_variables_last_finds_the_newest_from_the_end() -> None:
    rt = AgentRuntime()
    rt.inject("data", [1])
    for i in range(200):
        rt.namespace[f"v{i}"] = i
    rt.namespace["newest"] = "s"
    assert rt.agent_variables(last=3) == [("v198", "int"), ("v199", "int"), ("newest", "str")]
    assert len(rt.agent_variables()) == 201 and ("data", "list") not in rt.agent_variables()
