"""What the kernel needs from approvals: the ``%approvals`` magic and a control-channel handler.

``install(kernel)`` is called from ``CaveKernel.__init__``. It imports nothing heavy and opens no
file: the queue is opened when the session first needs it.

The control message (any client can send it on the control channel, like ``interrupt_request``)::

    msg_type: "cave_approval_decision"
    content:  {"id": "<request id or unique prefix>",
               "decision": "approve_once" | "approve_session" | "deny" | "answer",
               "answer": "<text: answers a question (human.ask); decision may then be omitted>",
               "who": "<optional name; default: the message header's username>"}
    reply:    "cave_approval_decision_reply" with {"status": "ok", "id", "state", "scope"}
              or {"status": "error", "ename", "evalue"}

``deny`` on a question declines it. The reply never echoes the answer.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from ._cell_context import remember_cell_context
from ._session_channel import make_channel

if TYPE_CHECKING:
    from ._channel import KernelApprovalChannel

__all__ = [
    "CONTROL_MSG_TYPE",
    "APPROVALS_USAGE",
    "install",
    "session_channel",
]

CONTROL_MSG_TYPE = "cave_approval_decision"
OUTCOME_ALIASES = {
    "approve_once": "approve_once",
    "once": "approve_once",
    "approve": "approve_once",
    "approve_session": "approve_session",
    "session": "approve_session",
    "deny": "deny",
    "decline": "deny",
    "answer": "answer",
}

APPROVALS_USAGE = """\
%approvals                  pending requests and the last 20 decided ones (oldest first)
%approvals -n N             ... the last N
%approvals approve ID [--session]   decide a pending request here (for example one restored
%approvals deny ID          from a checkpoint, which no widget shows)
%approvals answer ID TEXT   answer the agent's question (human.ask); deny ID declines it
%approvals ui [auto|widget|stdin]   how requests are shown: auto = widget, plus a stdin prompt
                            for frontends that are not notebooks (consoles)
From a terminal: cave approvals list | approve ID [--session] | deny ID | answer ID TEXT
"""


_session_provider: Callable[[], Any] | None = None


def session_channel(kernel: Any = None) -> KernelApprovalChannel:
    """The current session's channel (``session.approvals``), created there if not yet wired."""
    from ._channel import KernelApprovalChannel

    if _session_provider is None:
        raise RuntimeError(
            "No session to approve in: this works inside a Cave kernel (which calls "
            "cave.approvals.install); from a terminal use `cave approvals`."
        )
    session = _session_provider()
    channel = getattr(session, "approvals", None)
    if not isinstance(channel, KernelApprovalChannel):
        channel = make_channel(session, kernel)
        session.approvals = channel
    elif channel.kernel is None and kernel is not None:
        channel.kernel = kernel
    return channel


def install(kernel: Any, session_provider: Callable[[], Any]) -> None:
    """Register the control handler and the ``%approvals`` magic on ``kernel``.

    ``session_provider`` returns the kernel's session (the kernel hands it over, so approvals
    never import the session layer above them).
    """
    global _session_provider
    _session_provider = session_provider
    kernel.control_handlers[CONTROL_MSG_TYPE] = partial(_control_decision, kernel)
    shell = getattr(kernel, "shell", None)
    if shell is not None:
        shell.register_magic_function(partial(approvals_magic, kernel), "line", "approvals")
        shell.events.register("pre_run_cell", remember_cell_context)


def approvals_magic(kernel: Any, line: str) -> None:
    """``%approvals``: list pending and recent requests, or set how they are shown."""
    from .._errors import ConfigError
    from ._render import format_table

    words = line.strip().split(None, 2)
    if words[:1] == ["answer"]:  # the text as typed (shlex would choke on "it's")
        if len(words) < 3:
            raise ConfigError(f"usage: %approvals answer ID TEXT\n{APPROVALS_USAGE}")
        text = words[2]
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        channel = session_channel(kernel)
        record = channel.deliver(
            words[1], "answer", who=channel.frontend_user(), channel="magic", answer=text
        )
        print(f"{record.id}: {record.outcome_text()}")
        return
    args = shlex.split(line)
    channel = session_channel(kernel)
    if args and args[0] in ("help", "-h", "--help"):
        print(APPROVALS_USAGE)
        return
    if args and args[0] == "ui":
        from ._channel import UI_MODES

        if len(args) > 1:
            if args[1] not in UI_MODES:
                raise ConfigError(f"%approvals ui takes one of {', '.join(UI_MODES)}.")
            channel.ui = args[1]
        print(f"approval requests are shown as: {channel.ui}")
        return
    if args and args[0] in ("approve", "deny"):
        if (
            len(args) < 2
            or any(a not in ("--session",) for a in args[2:])
            or (args[0] == "deny" and len(args) > 2)
        ):
            raise ConfigError(
                f"usage: %approvals approve ID [--session] | deny ID\n{APPROVALS_USAGE}"
            )
        outcome = (
            "deny"
            if args[0] == "deny"
            else "approve_session"
            if "--session" in args[2:]
            else "approve_once"
        )
        record = channel.deliver(args[1], outcome, who=channel.frontend_user(), channel="magic")
        print(f"{record.id}: {record.outcome_text()}")
        return
    limit = 20
    if args[:1] == ["-n"] and len(args) == 2 and args[1].isdigit():
        limit = int(args[1])
    elif args:
        raise ConfigError(f"Unknown %approvals arguments {line!r}.\n{APPROVALS_USAGE}")
    channel.sweep(force=True)
    print(format_table(channel.queue.listing(limit)))


def _control_decision(kernel: Any, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
    """Control-channel handler: decide a request, reply with its new state (or the error)."""
    content = parent.get("content", {})
    reply: dict[str, Any]
    try:
        from .._errors import ApprovalError

        answer = content.get("answer")
        decision = str(content.get("decision") or ("answer" if answer is not None else ""))
        outcome = OUTCOME_ALIASES.get(decision)
        if outcome is None or not content.get("id"):
            shown = {k: v for k, v in content.items() if k != "answer"}
            raise ApprovalError(
                f"{CONTROL_MSG_TYPE} needs 'id' and 'decision' (one of "
                f"{', '.join(OUTCOME_ALIASES)}) or 'answer'; got {shown!r}."
            )
        if outcome != "answer" and answer is not None:
            raise ApprovalError(f"'answer' goes with decision 'answer', not {decision!r}.")
        if outcome == "answer" and not isinstance(answer, str):
            raise ApprovalError("decision 'answer' needs the text in 'answer' (a string).")
        from ._channel import _local_user

        who = content.get("who") or parent.get("header", {}).get("username") or _local_user()
        record = session_channel(kernel).deliver(
            str(content["id"]), outcome, who=str(who), channel="control", answer=answer
        )
        reply = {"status": "ok", "id": record.id, "state": record.state, "scope": record.scope}
    except Exception as err:
        reply = {"status": "error", "ename": type(err).__name__, "evalue": str(err)}
    kernel.session.send(stream, f"{CONTROL_MSG_TYPE}_reply", reply, parent, ident)
