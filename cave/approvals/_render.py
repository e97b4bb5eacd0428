"""Approval records as plain text, for ``%approvals`` and ``cave approvals list``.

Apart from the queue because what people read changes more often than what is stored, and
neither needs the other's reasons. The one-line texts of a single record (``outcome_text``,
``deadline_text``) stay methods of ``ApprovalRecord``; they and this table share ``clock``
(``_record``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._record import clock

if TYPE_CHECKING:
    from ._record import ApprovalRecord

__all__ = ["clock", "format_table"]


def format_table(records: Sequence[ApprovalRecord]) -> str:
    """A plain-text table for ``%approvals`` and ``cave approvals list``.

    Answers to questions are shown by length only: an answer may hold something the person
    typed for the agent alone (a password it asked for), and this table lands in notebooks.
    """
    if not records:
        return "No approval requests in this session."
    lines = []
    for r in records:
        head = f"{r.id}  {clock(r.created_at)}  {r.shown_state:<9}  {r.capability}"
        lines.append(head)
        lines.append(f"    {r.summary}")
        if r.code_line:
            lines.append(f"    asked by: {r.code_line.strip()[:160]}")
        deadline = r.deadline_text()
        if deadline:
            lines.append(f"    {deadline}")
        if not r.pending:
            lines.append(f"    {r.outcome_text()}")
    pending = [r for r in records if r.pending]
    if pending:
        hint = "`cave approvals approve ID` / `cave approvals deny ID`"
        if any(r.is_question for r in pending):
            hint += " (a question: `cave approvals answer ID TEXT`)"
        lines.append(f"{len(pending)} pending: decide in the notebook, or {hint}.")
    return "\n".join(lines)
