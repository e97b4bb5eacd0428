"""Large outputs stay in the runtime: ``_output_N`` holds the whole text, the model gets a line."""

from __future__ import annotations

from cave.agent._compaction import compact
from cave.runtime._namespace import AgentRuntime
from cave.runtime._outputs import KEPT_PREFIX


def test_a_cut_output_is_kept_whole_under_a_new_name_each_time() -> None:
    runtime = AgentRuntime()
    first = runtime.run("for i in range(5000):\n    print('line', i)", echo=False)
    assert "[..." in first.output  # the model's view is cut
    text = first.for_model()
    assert text.splitlines()[-1].startswith(KEPT_PREFIX) and "`_output_1`" in text
    whole = runtime.namespace["_output_1"]
    assert whole.splitlines()[2500] == "line 2500" and whole.count("\n") == 5000
    small = runtime.run("print('short')", echo=False)
    assert small.kept is None and "_output_2" not in runtime.namespace
    second = runtime.run("print('y' * 40_000)", echo=False)
    assert "`_output_2`" in second.for_model()
    # The model can use it instead of re-running the code.
    probe = runtime.run("print(_output_1.splitlines()[4999])", echo=False)
    assert probe.output == "line 4999\n"


def test_names_are_never_reused_even_after_a_delete_or_a_restored_name() -> None:
    runtime = AgentRuntime()
    runtime.namespace["_output_7"] = "from a restored checkpoint"
    runtime.run("print('z' * 40_000)", echo=False)
    assert runtime.namespace["_output_8"].startswith("zzz")
    runtime.run("del _output_8", echo=False)
    runtime.run("print('w' * 40_000)", echo=False)
    assert "_output_8" not in runtime.namespace and "_output_9" in runtime.namespace


def test_compaction_keeps_the_line_naming_the_variable() -> None:
    runtime = AgentRuntime()
    result = runtime.run("print('q' * 40_000)", echo=False)
    history = []
    for n in range(3):
        history += [
            {"role": "user", "content": [{"type": "text", "text": f"q{n}"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"t{n}",
                                               "name": "python", "input": {"code": "..."}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{n}",
                                          "content": [{"type": "text",
                                                       "text": result.for_model()}]}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        ]
    sent = compact(history, 9000)
    first_output = sent[2]["content"][0]["content"][0]["text"]
    assert "elided" in first_output and "`_output_1`" in first_output
    assert "q" * 1000 not in first_output
