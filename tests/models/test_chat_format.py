"""The translation between the Anthropic-format history and Chat Completions messages."""

from __future__ import annotations

from cave.models._chat_format import FENCED_INSTRUCTIONS, chat_messages
from cave.models._fenced import parse_fenced_code

SYSTEM = [{"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}},
          {"type": "text", "text": "Injected objects:\n(none)"}]


def test_translation_of_a_whole_history_in_both_modes():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "look at df"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "s"},
            {"type": "text", "text": "Two checks."},
            {"type": "tool_use", "id": "t1", "name": "python", "input": {"code": "df.shape"}},
            {"type": "tool_use", "id": "t2", "name": "python", "input": {"code": "1/0"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1",
             "content": [{"type": "text", "text": "Out: (3, 2)"}]},
            {"type": "tool_result", "tool_use_id": "t2", "content": "Error:\nZeroDivisionError",
             "is_error": True},
            {"type": "text", "text": "also plot it", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "base64", "data": "AAAA"}}]},
    ]
    assert chat_messages(SYSTEM[:1], history, fenced=False) == [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "look at df"},
        {"role": "assistant", "content": "Two checks.", "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "python", "arguments": '{"code": "df.shape"}'}},
            {"id": "t2", "type": "function",
             "function": {"name": "python", "arguments": '{"code": "1/0"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "Out: (3, 2)"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error:\nZeroDivisionError"},
        {"role": "user", "content": "also plot it\n\n[A image block was left out: this endpoint "
                                    "is sent text only.]"},
    ]
    fenced = chat_messages(SYSTEM[:1], history, fenced=True)
    assert fenced[0] == {"role": "system", "content": "Rules.\n\n" + FENCED_INSTRUCTIONS}
    # t1/t2 came from a tool-calling model: their code is written out as fences.
    assert fenced[2] == {"role": "assistant", "content": "Two checks.\n\n```python\ndf.shape\n```"
                                                         "\n\n```python\n1/0\n```"}
    assert fenced[3]["role"] == "user" and fenced[3]["content"].startswith(
        "Output of code block 1:\nOut: (3, 2)\n\nOutput of code block 2 (error):\nError:\n"
        "ZeroDivisionError\n\nalso plot it")
    assert len(fenced) == 4


def test_a_call_left_without_result_gets_one_and_code_with_fences_gets_a_longer_fence():
    history = [{"role": "user", "content": "go"},
               {"role": "assistant", "content": [
                   {"type": "tool_use", "id": "a", "name": "python", "input": {"code": "x = 1"}},
                   {"type": "tool_use", "id": "b", "name": "python",
                    "input": {"code": 's = """```py\n1\n```"""'}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a",
                                             "content": "ok"}]}]
    tool = chat_messages([], history, fenced=False)
    assert tool[3] == {"role": "tool", "tool_call_id": "b",
                       "content": "(no result: the call was not run)"}
    fenced = chat_messages([], history, fenced=True)
    assert fenced[0] == {"role": "system", "content": FENCED_INSTRUCTIONS}
    text = fenced[2]["content"]
    assert "````python\ns = \"\"\"```py\n1\n```\"\"\"\n````" in text
    assert parse_fenced_code(text)[1] == ["x = 1\n", 's = """```py\n1\n```"""\n']
