"""The fenced-code fallback: the parser, and the stream filter that keeps run blocks out of the
shown prose."""

from __future__ import annotations

import pytest

from cave.models._fenced import FencedProseStream, parse_fenced_code


def test_python_blocks_run_in_order_and_leave_the_prose():
    text = ("First I load it.\n\n```python\nx = 1\n```\n\nThen I print it.\n\n```py\nprint(x)\n```"
            "\nDone.")
    prose, blocks = parse_fenced_code(text)
    assert blocks == ["x = 1\n", "print(x)\n"]
    assert prose == "First I load it.\n\nThen I print it.\n\nDone."


def test_bare_and_tilde_fences_run_other_languages_do_not():
    text = "~~~\na = 1\n~~~\n```bash\nrm -rf /\n```\n~~~~python3\nb = 2\n~~~~\n```json\n{}\n```\n"
    prose, blocks = parse_fenced_code(text)
    assert blocks == ["a = 1\n", "b = 2\n"]
    assert prose == "```bash\nrm -rf /\n```\n```json\n{}\n```"


def test_closing_fence_must_match_char_and_length():
    text = "````python\nprint('```')\n```\nstill code\n````\nafter"
    prose, blocks = parse_fenced_code(text)
    assert blocks == ["print('```')\n```\nstill code\n"]
    assert prose == "after"


def test_indented_fence_in_a_list_is_dedented():
    text = "1. Compute:\n\n   ```python\n   for i in range(2):\n       print(i)\n   ```\n2. Next"
    prose, blocks = parse_fenced_code(text)
    assert blocks == ["for i in range(2):\n    print(i)\n"]
    assert prose == "1. Compute:\n\n2. Next"


def test_unterminated_fence_is_not_run_and_is_reported():
    text = "Here:\n```python\nimport os\nos.remove("
    prose, blocks = parse_fenced_code(text)
    assert blocks == []
    assert prose.startswith("Here:\n```python\nimport os\nos.remove(")
    assert "opened on line 2 has no closing ```, so it was not run" in prose


def test_info_string_attributes_and_inline_backticks():
    text = 'Use ```x``` inline.\n```python title="demo"\ny = 3\n```'
    prose, blocks = parse_fenced_code(text)
    assert blocks == ["y = 3\n"]
    assert prose == "Use ```x``` inline."


def test_no_code_and_crlf():
    assert parse_fenced_code("Just an answer.") == ("Just an answer.", [])
    assert parse_fenced_code("a\r\n```python\r\nz = 1\r\n```\r\nb") == ("a\r\nb", ["z = 1\r\n"])


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_the_prose_stream_drops_exactly_the_blocks_that_run(size):
    text = ("Intro ``` not a fence\n\n"
            "```bash\nls\n```\n"
            "Then:\n\n"
            "  ```python\n  x = 1\n  ```\n\n"
            "~~~\ny = 2\n~~~\n"
            "````py\n```\nz = 3\n````\n"
            "```python\nunclosed = True\n")
    out: list[str] = []
    stream = FencedProseStream(out.append)
    for i in range(0, len(text), size):
        stream.feed(text[i : i + size])
    stream.finish()
    assert "".join(out) == ("Intro ``` not a fence\n\n```bash\nls\n```\nThen:\n"
                            "```python\nunclosed = True\n")
    assert parse_fenced_code(text)[1] == ["x = 1\n", "y = 2\n", "```\nz = 3\n"]
    if size == 1:  # prose goes out as it arrives, not a line at a time
        assert out[:3] == ["I", "n", "t"]
