"""The notebook view of one approval request: what, why, three buttons, then the outcome.

Built from stock ipywidgets (no frontend extension to install): an ``HTML`` with the request, an
``HBox`` of three ``Button``s and an ``HTML`` status line. A click reaches the kernel as a normal
``comm_msg`` on the shell channel, which ipykernel 7 dispatches while the agent cell's coroutine
awaits the turn; the callback runs on the kernel's main thread and only records the decision (the
waiting worker thread does the rest).

The display carries a ``text/plain`` rendering too, so frontends that cannot render widgets
(consoles, ``cave run``, a notebook read later) still say what was asked and how to answer it.

A question from ``human.ask`` gets a :class:`QuestionView` instead: the question, a ``Textarea``,
**Send** and **Decline**. The frontend syncs the text box to the kernel with a ``comm_msg``
(``update``) before the click's ``comm_msg`` arrives, so the Send callback reads what was typed.
The answer itself is not rendered back into the output (only its length): the notebook is saved
and shared, the answer may be for the agent only.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._record import MAX_ANSWER_CHARS, PENDING, ApprovalRecord

__all__ = ["ApprovalView", "BUTTONS", "QuestionView", "describe_html", "describe_text"]

BUTTONS: tuple[tuple[str, str, str], ...] = (
    ("approve_once", "Approve once", "success"),
    ("approve_session", "Approve for this session", "info"),
    ("deny", "Deny", "danger"),
)
"""(outcome, label, button style), in display order."""

_KNOWN = ("path", "bytes", "size", "sha256", "argv", "cwd", "method", "url", "host")
_PREVIEW_KEYS = ("preview", "content_preview", "body_preview")
_PREVIEW_CHARS = 2000


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


_SOURCE_KEYS = ("source", "language")
"""A request that carries code to run later (a tool's registration) shows all of it."""


def _rows(details: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Known fields first (path, byte count, hash, argv, URL...), then the rest, previews last."""
    keys = [k for k in _KNOWN if k in details]
    keys += [
        k for k in details if k not in _KNOWN and k not in _PREVIEW_KEYS and k not in _SOURCE_KEYS
    ]
    return [(k, _fmt(details[k])) for k in keys]


def _shown_details(record: ApprovalRecord) -> Mapping[str, Any]:
    """The details worth a row: a question's text is already the summary."""
    if record.is_question:
        return {k: v for k, v in record.details.items() if k != "question"}
    return record.details


def _preview(details: Mapping[str, Any]) -> str | None:
    for key in _PREVIEW_KEYS:
        if details.get(key) is not None:
            text = str(details[key])
            return text[:_PREVIEW_CHARS] + ("\n[...]" if len(text) > _PREVIEW_CHARS else "")
    return None


def _when(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def describe_text(record: ApprovalRecord) -> str:
    """Plain-text version of the widget, for frontends without widgets."""
    lines = [f"[cave] approval {record.id}: {record.capability}", f"  {record.summary}"]
    lines += [f"  {key}: {value}" for key, value in _rows(_shown_details(record))]
    preview = _preview(record.details)
    if preview is not None:
        lines.append("  preview:")
        lines += [f"    | {line}" for line in preview.splitlines()[:20]]
    source = record.details.get("source")
    if isinstance(source, str):
        lines.append(f"  source ({record.details.get('language', 'code')}, in full):")
        lines += [f"  {n:4d} | {line}" for n, line in enumerate(source.splitlines(), 1)]
    if record.code_line:
        lines.append(f"  asked by: {record.code_line.strip()}")
    deadline = record.deadline_text()
    if deadline:
        lines.append(f"  {deadline}")
    if record.state == PENDING and record.is_question:
        lines.append(
            f"  waiting for an answer: `cave approvals answer {record.id} TEXT` or "
            f"`cave approvals deny {record.id}` (decline) in a terminal"
        )
    elif record.state == PENDING:
        lines.append(
            f"  waiting for a decision: `cave approvals approve {record.id}` or "
            f"`cave approvals deny {record.id}` in a terminal"
        )
    else:
        lines.append(f"  {record.outcome_text()}")
    return "\n".join(lines)


def describe_html(record: ApprovalRecord) -> str:
    """The request as HTML: capability, summary, details table, preview, the asking code line."""
    esc = html.escape
    rows = "".join(
        f'<tr><th style="text-align:left;padding-right:1em;font-weight:600">{esc(k)}</th>'
        f'<td style="text-align:left;font-family:monospace;word-break:break-all">{esc(v)}</td></tr>'
        for k, v in _rows(_shown_details(record))
    )
    title = "The agent asks you" if record.is_question else "Approval needed"
    parts = [
        f'<div class="cave-approval-request" data-request-id="{esc(record.id)}">',
        f"<div><b>{title}</b> &middot; <code>{esc(record.capability)}</code>"
        f' <span style="color:#888">({esc(record.id)}, asked at {_when(record.created_at)})'
        "</span></div>",
        f'<div style="margin:0.3em 0;font-size:110%">{esc(record.summary)}</div>',
    ]
    if rows:
        parts.append(f'<table style="margin:0.2em 0">{rows}</table>')
    preview = _preview(record.details)
    if preview is not None:
        parts.append(
            '<div style="color:#666">preview</div><pre style="max-height:12em;overflow:auto;'
            f'margin:0.2em 0;padding:0.4em;background:rgba(127,127,127,0.1)">{esc(preview)}</pre>'
        )
    source = record.details.get("source")
    if isinstance(source, str):
        language = str(record.details.get("language", "code"))
        parts.append(
            f'<div style="color:#666">source ({esc(language)}, {len(source.splitlines())} lines, '
            "in full)</div>"
            '<div class="cave-approval-source" style="max-height:24em;overflow:auto;'
            'margin:0.2em 0;padding:0.4em;background:rgba(127,127,127,0.1)">'
            f"{highlight(source, language)}</div>"
        )
    if record.code_line:
        parts.append(
            '<div><span style="color:#666">asked by the agent\'s line</span> '
            f"<code>{esc(record.code_line.strip())}</code></div>"
        )
    parts.append("</div>")
    return "".join(parts)


def highlight(source: str, language: str) -> str:
    """``source`` as highlighted HTML (inline styles, line numbers); plain without pygments."""
    try:
        from pygments import highlight as render
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name
        from pygments.util import ClassNotFound
    except ImportError:
        return f"<pre style=\"margin:0\">{html.escape(source)}</pre>"
    try:
        lexer = get_lexer_by_name(language)
    except ClassNotFound:
        return f"<pre style=\"margin:0\">{html.escape(source)}</pre>"
    formatter = HtmlFormatter(noclasses=True, linenos="inline", nobackground=True)
    return str(render(source, lexer, formatter))


def _status_html(record: ApprovalRecord, problem: str | None = None) -> str:
    if record.state == PENDING:
        rid = html.escape(record.id)
        deadline = record.deadline_text()
        when = f"; {html.escape(deadline)}" if deadline else ""
        if record.is_question:
            how = f"<code>cave approvals answer {rid} TEXT</code>"
            text = f"Waiting for your answer{when} (or {how} in a terminal)"
        else:
            how = f"<code>cave approvals approve {rid}</code>"
            text = f"Waiting for your decision{when} (or {how} in a terminal)"
        if problem:
            text = f'<b style="color:#b02a2a">{html.escape(problem)}</b> {text}'
        return f'<span class="cave-approval-status" style="color:#888">{text}</span>'
    color = {"approved": "#2a7d2a", "denied": "#b02a2a"}.get(record.state, "#8a6d00")
    return (
        f'<span class="cave-approval-status" data-state="{record.state}" style="color:{color}">'
        f"<b>{html.escape(record.outcome_text())}</b></span>"
    )


class _RequestView:
    """What both views share: the widget box, the record it shows, and its display data."""

    box: Any
    record: ApprovalRecord

    @property
    def model_id(self) -> str:
        return str(self.box.model_id)

    def bundle(self) -> dict[str, Any]:
        """The display data: the widget view plus a text rendering for other frontends."""
        return {
            "text/plain": describe_text(self.record),
            "application/vnd.jupyter.widget-view+json": {
                "version_major": 2,
                "version_minor": 0,
                "model_id": self.model_id,
            },
        }


class ApprovalView(_RequestView):
    """One request's widget. ``on_click(outcome)`` runs on the kernel's main thread."""

    def __init__(self, record: ApprovalRecord, on_click: Callable[[str], None]) -> None:
        import ipywidgets as widgets

        self.record = record
        self._on_click = on_click
        self.details = widgets.HTML(describe_html(record))
        self.buttons: dict[str, Any] = {}
        for outcome, label, style in BUTTONS:
            button = widgets.Button(
                description=label,
                button_style=style,
                tooltip=f"{label}: {record.summary}"[:200],
                layout=widgets.Layout(width="auto"),
            )
            button.on_click(lambda _b, outcome=outcome: self._clicked(outcome))
            self.buttons[outcome] = button
        self.status = widgets.HTML(_status_html(record))
        self.box = widgets.VBox(
            [self.details, widgets.HBox(list(self.buttons.values())), self.status],
            layout=widgets.Layout(
                border="1px solid rgba(127,127,127,0.4)", padding="0.4em", margin="0.3em 0"
            ),
        )
        self.box.add_class("cave-approval")
        self.settled = False

    def _clicked(self, outcome: str) -> None:
        if self.settled:  # a late click from a stale view: the decision is already made
            return
        self._on_click(outcome)

    def settle(self, record: ApprovalRecord) -> None:
        """Show who decided what and when, and stop being clickable."""
        self.record = record
        self.settled = record.state != PENDING
        for button in self.buttons.values():
            button.disabled = self.settled
        self.status.value = _status_html(record)


class QuestionView(_RequestView):
    """A ``human.ask`` question: a text box, Send and Decline. Callbacks run on the main thread.

    ``on_answer(text)`` gets the typed text (Send) or None (Decline) and returns a problem to
    show (empty, too long) or None. The view has the same ``bundle``/``settle`` as ApprovalView.
    """

    def __init__(
        self, record: ApprovalRecord, on_answer: Callable[[str | None], str | None]
    ) -> None:
        import ipywidgets as widgets

        self.record = record
        self._on_answer = on_answer
        self.details = widgets.HTML(describe_html(record))
        self.text = widgets.Textarea(
            placeholder=f"Your answer (up to {MAX_ANSWER_CHARS:,} characters)",
            layout=widgets.Layout(width="100%", height="5em"),
        )
        self.buttons: dict[str, Any] = {
            "answer": widgets.Button(
                description="Send", button_style="success", layout=widgets.Layout(width="auto")
            ),
            "deny": widgets.Button(
                description="Decline", button_style="danger", layout=widgets.Layout(width="auto")
            ),
        }
        self.buttons["answer"].on_click(lambda _b: self._clicked(self.text.value))
        self.buttons["deny"].on_click(lambda _b: self._clicked(None))
        self.status = widgets.HTML(_status_html(record))
        self.box = widgets.VBox(
            [self.details, self.text, widgets.HBox(list(self.buttons.values())), self.status],
            layout=widgets.Layout(
                border="1px solid rgba(127,127,127,0.4)", padding="0.4em", margin="0.3em 0"
            ),
        )
        self.box.add_class("cave-approval")
        self.settled = False

    def _clicked(self, text: str | None) -> None:
        if self.settled:
            return
        problem = self._on_answer(text)
        if problem and not self.settled:
            self.status.value = _status_html(self.record, problem)

    def settle(self, record: ApprovalRecord) -> None:
        """Show the outcome, clear the text box (the answer is not kept in the page), lock."""
        self.record = record
        self.settled = record.state != PENDING
        if self.settled:
            self.text.value = ""
        self.text.disabled = self.settled
        for button in self.buttons.values():
            button.disabled = self.settled
        self.status.value = _status_html(record)
