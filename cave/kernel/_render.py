"""Turn events into cell output: streamed Markdown, collapsible code, a usage footer.

Called from the turn's worker thread. ipykernel keeps the cell's parent header in a context
variable that ``asyncio``'s executor copies, so displays from that thread land in the right cell.
Each display carries ``text/plain`` too, so consoles and ``cave run`` read the same output.
"""

from __future__ import annotations

import html
import sys
import time
from typing import Any

from ..agent._events import (
    CodeFinished,
    CodeStarted,
    Event,
    ModelCalled,
    Notice,
    TextDelta,
    ToolInputRejected,
    TurnFinished,
)
from ..models._protocol import Usage

UPDATE_INTERVAL_S = 0.08
"""Streaming text is re-rendered at most this often: enough to look live, cheap on the frontend."""


class _Bundle:
    """A display object made of explicit mime data (IPython calls ``_repr_mimebundle_``)."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return self.data


def _markdown(text: str) -> _Bundle:
    return _Bundle({"text/markdown": text, "text/plain": text})


def code_bundle(step: int, code: str) -> _Bundle:
    escaped = html.escape(code)
    return _Bundle(
        {
            "text/html": (
                '<details class="cave-code" open><summary style="cursor:pointer;color:#666">'
                f"agent code &middot; step {step}</summary>"
                f'<pre style="margin:0.3em 0;padding:0.5em;background:rgba(127,127,127,0.08)">'
                f'<code class="language-python">{escaped}</code></pre></details>'
            ),
            "text/markdown": f"<details open><summary>agent code · step {step}</summary>\n\n"
            f"```python\n{code}\n```\n</details>",
            "text/plain": f"--- agent code (step {step}) ---\n{code}\n---",
        }
    )


def footer_text(event: TurnFinished) -> str:
    parts = [
        f"{event.steps} step{'s' if event.steps != 1 else ''}",
        usage_text(event.usage),
        f"{event.duration_s:.1f} s",
        event.model,
    ]
    if event.stopped:
        parts.insert(0, f"stopped ({event.stopped})")
    for who, usage in getattr(event, "by_agent", ()):
        parts.append(f"{who}: {usage_text(usage)}")
    if event.session:
        parts.append(event.session)
    return " · ".join(parts)


def usage_text(usage: Usage) -> str:
    text = f"{usage.input_tokens:,} in / {usage.output_tokens:,} out tokens"
    if usage.cache_read_tokens or usage.cache_write_tokens:
        text += f" · cache {usage.cache_read_tokens:,} read / {usage.cache_write_tokens:,} written"
    if usage.cost_usd is not None:
        text += f" · ${usage.cost_usd:.4f}"
    return text


class CellRenderer:
    """An ``EventSink`` that renders one turn into the current cell."""

    def __init__(self) -> None:
        from IPython.display import display

        self._display = display
        self._handle: Any = None
        self._text = ""
        self._shown = ""
        self._last_update = 0.0
        self.answer = ""

    def __call__(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._text += event.text
            now = time.monotonic()
            if self._handle is None:
                self._handle = self._display(_markdown(self._text), display_id=True)
                self._shown, self._last_update = self._text, now
            elif now - self._last_update >= UPDATE_INTERVAL_S:
                self._handle.update(_markdown(self._text))
                self._shown, self._last_update = self._text, now
        elif isinstance(event, ModelCalled):
            self._flush_text()
        elif isinstance(event, CodeStarted):
            self._flush_text(new_block=True)
            self._display(code_bundle(event.step, event.code))
        elif isinstance(event, CodeFinished):
            result = event.result
            if result.timed_out:
                print("[cave] the code step hit its time limit and was stopped", file=sys.stderr)
            elif result.error:
                print(result.error, file=sys.stderr)
        elif isinstance(event, Notice):
            self._flush_text(new_block=True)
            text = f"[cave] {event.text}"
            self._display(_Bundle({
                "text/html": f'<div class="cave-notice" style="color:#888;font-size:85%">'
                f"{html.escape(text)}</div>",
                "text/plain": text,
            }))
        elif isinstance(event, ToolInputRejected):
            print(f"[cave] the model sent unusable tool input: {event.error}", file=sys.stderr)
        elif isinstance(event, TurnFinished):
            self._flush_text()
            self.answer = event.answer
            text = footer_text(event)
            self._display(
                _Bundle(
                    {
                        "text/html": f'<div class="cave-footer" style="color:#888;font-size:85%">'
                        f"{html.escape(text)}</div>",
                        "text/plain": f"[{text}]",
                    }
                )
            )

    def _flush_text(self, *, new_block: bool = False) -> None:
        if self._handle is not None and self._shown != self._text:
            self._handle.update(_markdown(self._text))
            self._shown = self._text
        if new_block:
            self._handle, self._text, self._shown = None, "", ""
