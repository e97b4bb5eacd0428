"""The kernel's approval channel: persist, show, and take the first answer from any channel.

How waiting works (see docs/approvals.md for the alternatives we rejected): a primitive calls
:meth:`KernelApprovalChannel.decide` from the agent's worker thread, which blocks *that thread
only*. The cell's coroutine is awaiting the turn, so the kernel's event loop keeps dispatching
shell messages, and a widget click (a ``comm_msg``) runs its callback on the main thread. Every
channel writes its decision into the queue (SQLite, first writer wins) and then wakes the waiter:

* **widget**: the button callback, on the kernel's main thread;
* **control**: a ``cave_approval_decision`` message on the control channel (see ``_kernel_glue``);
* **stdin**: an ``input_request`` sent by the waiting thread itself, polled without blocking, for
  frontends that cannot render widgets (consoles);
* **CLI**: another process writing the same database; seen by polling (``poll_interval``).

Cancellation: the waiter checks the turn's ``cancelled`` event every ``poll_interval``; the stop
button also raises ``KeyboardInterrupt`` in the waiting thread (the executor's interrupt). Either
way the request becomes ``cancelled`` and the exception (or ``Decision.CANCELLED``) propagates.

Timeouts: a request with ``timeout`` (the policy's ``ask ... timeout=N``) gets a deadline in the
queue; the waiter expires it there when the deadline passes and returns ``Decision.EXPIRED``.
What an expiry means (deny, or allow) is the security layer's call (``request.on_timeout``).

Questions (``human.ask``): :meth:`KernelApprovalChannel.answer` waits the same way, but the widget
has a text box with Send / Decline, the stdin prompt takes a line, the CLI and the control message
carry the text, and the answer comes back from the queue's ``answer`` column.

Not enforced here: *who* may click. Anyone connected to the kernel (or able to write the session
directory) can approve; the decision records the Jupyter username the frontend claims.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import linecache
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .._agent_code import is_agent_filename
from .._errors import ApprovalError as _ApprovalError
from ._cell_context import cell_context_for_thread
from ._owner import Owner
from ._queue import AlreadyDecided, ApprovalQueue, UnknownRequest
from ._record import APPROVED, CANCELLED, EXPIRED, PENDING, ApprovalRecord
from ._unattended import note_unanswered, unattended_wait

if TYPE_CHECKING:
    from ..security._audit import AuditSink
    from ._protocol import ApprovalRequest, Decision
    from ._widget import ApprovalView, QuestionView

__all__ = ["KernelApprovalChannel", "UI_MODES", "parse_answer", "wake"]

UI_MODES = ("auto", "widget", "stdin")
"""auto: widget, plus a stdin prompt when the frontend allows stdin and is not a notebook."""

_ANSWERS = {
    "o": "approve_once",
    "once": "approve_once",
    "y": "approve_once",
    "yes": "approve_once",
    "s": "approve_session",
    "session": "approve_session",
    "d": "deny",
    "deny": "deny",
    "n": "deny",
    "no": "deny",
}
_PROMPT = "Approve {id}? [o]nce / [s]ession / [d]eny: "
_QUESTION_PROMPT = "[cave] the agent asks ({id}): {question}\nYour answer (empty line declines): "

_WAITERS: dict[str, threading.Event] = {}
_WAITERS_LOCK = threading.Lock()

def wake(request_id: str) -> bool:
    """Wake the thread of this process that waits for ``request_id`` (False if none does)."""
    with _WAITERS_LOCK:
        event = _WAITERS.get(request_id)
    if event is None:
        return False
    event.set()
    return True


def parse_answer(text: str) -> str | None:
    """A stdin answer -> an outcome (``approve_once`` / ``approve_session`` / ``deny``) or None."""
    return _ANSWERS.get(text.strip().lower())


def decision_for(record: ApprovalRecord) -> Decision:
    """The protocol's ``Decision`` for a decided row."""
    from ._protocol import Decision

    if record.state == APPROVED:
        return Decision.APPROVE_SESSION if record.scope == "session" else Decision.APPROVE_ONCE
    if record.state == EXPIRED:
        return getattr(Decision, "EXPIRED", Decision.DENY)
    if record.state == CANCELLED:
        return getattr(Decision, "CANCELLED", Decision.DENY)
    return Decision.DENY


class KernelApprovalChannel:
    """``ApprovalChannel`` for the Cave kernel; without a kernel, only CLI and control answer."""

    def __init__(
        self,
        queue: ApprovalQueue,
        *,
        kernel: Any = None,
        audit: AuditSink | None = None,
        ui: str = "auto",
        poll_interval: float = 0.05,
    ) -> None:
        self.queue = queue
        self.kernel = kernel
        self.audit = audit
        self.ui = ui
        self.poll_interval = poll_interval
        self._swept = False
        self._views: dict[str, ApprovalView | QuestionView] = {}

    # -- the protocol ----------------------------------------------------------------------
    def decide(self, request: ApprovalRequest, cancelled: threading.Event) -> Decision:
        """Persist ``request``, show it, block until a channel answers; see the module doc."""
        return decision_for(self._in_cell(request, cancelled))

    def answer(self, request: ApprovalRequest, cancelled: threading.Event) -> str | None:
        """Ask ``request.summary`` as a question; the answer text, or None if declined/expired.

        ``request.capability`` must be a question's (``human:ask``, as ``human.ask`` makes it).
        """
        record = self._in_cell(request, cancelled)
        return record.answer if record.state == APPROVED else None

    def _in_cell(self, request: ApprovalRequest, cancelled: threading.Event) -> ApprovalRecord:
        context = cell_context_for_thread() if self.kernel is not None else None
        if context is not None:
            return context.run(self._ask, request, cancelled)
        return self._ask(request, cancelled)

    def _ask(self, request: ApprovalRequest, cancelled: threading.Event) -> ApprovalRecord:
        self.sweep()
        if request.code_line is None and dataclasses.is_dataclass(request):
            request = dataclasses.replace(request, code_line=agent_line())
        waiter = threading.Event()
        with _WAITERS_LOCK:
            _WAITERS[request.id] = waiter
        record: ApprovalRecord | None = None
        prompt: _StdinPrompt | None = None
        # Everything from the submit on is inside the try: an interrupt (the stop button's
        # KeyboardInterrupt, raised between any two bytecodes of this thread) that lands after
        # the row is committed but before submit returns must still cancel it, so the cancel
        # goes by the request's id, not by the record we may never have received.
        try:
            timeout, on_timeout = _timeout_of(request), _on_timeout_of(request)
            wait = self._unattended_wait() if timeout is None else None
            if wait is not None:  # maybe nobody can answer: a deadline, then deny (_unattended.py)
                timeout, on_timeout = wait, "deny"
            record = self.queue.submit(request, timeout=timeout, on_timeout=on_timeout)
            self._audit("approval.requested", record)
            self._show(record)
            prompt = self._stdin_prompt(record)
            record = self._wait(record, waiter, cancelled, prompt)
            if wait is not None and record.state == EXPIRED:
                note_unanswered(record.id, str(request.capability))
        except BaseException as exc:  # noqa: B036 - the stop button arrives as KeyboardInterrupt
            record = self._cancel(request.id, f"the turn was stopped ({type(exc).__name__})")
            raise
        finally:
            with _WAITERS_LOCK:
                _WAITERS.pop(request.id, None)
            if record is not None:
                self._settle(record)
                if record.state != PENDING:
                    self._audit("approval.decided", record)
        assert record is not None  # the try either assigned it or raised
        return record

    def deliver(
        self, request_id: str, outcome: str, *, who: str, channel: str, answer: str | None = None
    ) -> ApprovalRecord:
        """Record a decision that arrived in this process (widget, control) and wake the waiter.

        ``outcome`` ``answer`` with the ``answer`` text answers a question; ``deny`` declines it.
        """
        record = self.queue.decide(request_id, outcome, who=who, channel=channel, answer=answer)
        wake(record.id)
        return record

    def sweep(self, *, force: bool = False) -> list[ApprovalRecord]:
        """Expire requests left pending by dead kernels (once per channel unless ``force``).

        Also audits decisions that no kernel has audited yet (requests the CLI expired while no
        kernel ran), so the audit log gets every expiry even if the terminal saw it first.
        """
        if self._swept and not force:
            return []
        self._swept = True
        expired = self.queue.expire_orphans() + self.queue.expire_overdue()
        me = str(self.queue.owner)
        for record in self.queue.unaudited():
            if record.owner == me or Owner.parse(record.owner).alive() is not False:
                continue  # a live kernel (maybe this one) audits its own requests
            self._audit("approval.decided", record)
        return expired

    # -- waiting ---------------------------------------------------------------------------
    def _wait(
        self,
        record: ApprovalRecord,
        waiter: threading.Event,
        cancelled: threading.Event,
        prompt: _StdinPrompt | None,
    ) -> ApprovalRecord:
        while True:
            if self.queue.state(record.id) != PENDING:
                return self.queue.get(record.id)
            if cancelled.is_set():
                return self._cancel(record.id, "the turn was stopped") or record
            if record.deadline is not None and time.time() >= record.deadline:
                expired = self.queue.expire_overdue()
                for item in expired:
                    if item.id != record.id:
                        self._audit("approval.decided", item)
                continue
            if prompt is not None:
                answer = prompt.poll(self.poll_interval)
                if answer is not None:
                    self._stdin_answer(record, prompt, *answer)
            else:
                waiter.wait(self.poll_interval)
            waiter.clear()

    def _cancel(self, request_id: str, reason: str) -> ApprovalRecord | None:
        """Cancel ``request_id`` if it is pending; its row, or None if it was never submitted."""
        for _ in range(3):  # a re-fired interrupt may land in here; the write must still happen
            try:
                self.queue.state(request_id)  # exact id: never cancel another request by prefix
                return self.queue.decide(
                    request_id, "cancel", who="cave", channel="interrupt", reason=reason
                )
            except AlreadyDecided as done:
                return done.record
            except UnknownRequest:
                return None
            except (KeyboardInterrupt, Exception):
                continue
        try:
            return self.queue.get(request_id)
        except Exception:
            return None

    def _stdin_answer(
        self, record: ApprovalRecord, prompt: _StdinPrompt, text: str, who: str
    ) -> None:
        answer: str | None = None
        if record.is_question:
            blank = text == "\x04" or not text.strip()  # EOF or an empty line: decline
            outcome: str | None = "deny" if blank else "answer"
            answer = None if blank else text
        elif text == "\x04":  # EOF at the console
            outcome = "deny"
        else:
            outcome = parse_answer(text)
        if outcome is None:
            prompt.ask(f"Please answer o, s or d. {_PROMPT.format(id=record.id)}")
            return
        try:
            self.queue.decide(record.id, outcome, who=who, channel="stdin", answer=answer)
        except AlreadyDecided:
            pass
        except _ApprovalError as err:  # too long: say so and ask again
            prompt.ask(f"{err}\n{_question_prompt(record)}")

    # -- showing ---------------------------------------------------------------------------
    def _show(self, record: ApprovalRecord) -> None:
        if self.kernel is None or getattr(self.kernel, "shell", None) is None:
            return
        from ._widget import ApprovalView, QuestionView

        view: ApprovalView | QuestionView
        if record.is_question:
            view = QuestionView(record, lambda text: self._answered(record.id, text))
        else:
            view = ApprovalView(record, lambda outcome: self._clicked(record.id, outcome))
        self._views[record.id] = view
        self._publish(view.bundle(), record.id, update=False)

    def _settle(self, record: ApprovalRecord) -> None:
        view = self._views.pop(record.id, None)
        if view is None:
            return
        try:
            view.settle(record)
            self._publish(view.bundle(), record.id, update=True)
        except Exception:  # a display failure must not turn a decision into an error
            pass

    def _clicked(self, request_id: str, outcome: str) -> None:
        """Button callback (kernel main thread, inside the comm_msg's context)."""
        try:
            self.deliver(request_id, outcome, who=self.frontend_user(), channel="widget")
        except AlreadyDecided:
            pass

    def _answered(self, request_id: str, text: str | None) -> str | None:
        """Send / Decline callback of a question (main thread); a problem to show, or None."""
        who = self.frontend_user()
        try:
            if text is None:
                self.deliver(request_id, "deny", who=who, channel="widget")
            else:
                self.deliver(request_id, "answer", who=who, channel="widget", answer=text)
        except AlreadyDecided:
            return None
        except _ApprovalError as err:  # empty or too long: the request stays pending
            return str(err)
        return None

    def _publish(self, data: dict[str, Any], request_id: str, *, update: bool) -> None:
        """Publish past the executor's display tap: the model should not read our widget."""
        pub = self.kernel.shell.display_pub
        type(pub).publish(
            pub, data, {}, transient={"display_id": f"cave-approval-{request_id}"}, update=update
        )

    def frontend_user(self) -> str:
        """The username the current message's frontend claims, else the login name."""
        parent: dict[str, Any] = {}
        if self.kernel is not None:
            try:
                parent = self.kernel.get_parent("shell") or {}
            except Exception:
                parent = {}
        user = parent.get("header", {}).get("username")
        return str(user) if user else _local_user()

    def _unattended_wait(self) -> float | None:
        if self.kernel is None:
            return unattended_wait(None)
        try:
            parent = self.kernel.get_parent("shell") or {}
        except Exception:
            parent = {}
        return unattended_wait(parent)

    # -- stdin -----------------------------------------------------------------------------
    def _stdin_prompt(self, record: ApprovalRecord) -> _StdinPrompt | None:
        if self.kernel is None or self.ui == "widget":
            return None
        parent = self.kernel.get_parent("shell") or {}
        if not parent.get("content", {}).get("allow_stdin"):
            return None
        # Notebook frontends (JupyterLab, Notebook 7) tag each execute_request with its cellId and
        # render the widget; consoles do not, and get a prompt too.
        if self.ui == "auto" and "cellId" in (parent.get("metadata") or {}):
            return None
        prompt = _StdinPrompt(self.kernel, parent)
        prompt.ask(_question_prompt(record) if record.is_question else _PROMPT.format(id=record.id))
        return prompt

    # -- audit -----------------------------------------------------------------------------
    def _audit(self, kind: str, record: ApprovalRecord) -> None:
        if self.audit is None:
            return
        fields: dict[str, Any] = {
            "id": record.id,
            "capability": record.capability,
            "summary": record.summary,
            "state": record.state,
        }
        if record.deadline is not None:
            fields.update(
                timeout_s=round(record.deadline - record.created_at, 3),
                on_timeout=record.on_timeout or "deny",
            )
        if record.state != PENDING:
            fields.update(
                scope=record.scope,
                decided_by=record.decided_by,
                channel=record.channel,
                reason=record.reason,
                waited_s=round((record.decided_at or record.created_at) - record.created_at, 3),
            )
        if record.answer is not None:  # the text stays in the queue: see docs/approvals.md
            fields.update(
                answer_chars=len(record.answer),
                answer_sha256=hashlib.sha256(record.answer.encode("utf-8")).hexdigest(),
            )
        try:
            self.audit.record(kind, **fields)
            if record.state != PENDING:
                self.queue.mark_audited(record.id)
        except Exception:
            pass


def agent_line() -> str | None:
    """The line of agent code that is running now, if exactly one thread is running agent code.

    The security layer does not (yet) tell us which line asked; the agent's thread is blocked in
    that very line while we run, so its innermost frame from a ``<cave-...>`` file is it. Display
    only: ambiguous (several agent threads) or unknown gives None, and agent code can lie anyway.
    """
    found: list[tuple[str, int]] = []
    for frame in sys._current_frames().values():
        walker: Any = frame
        while walker is not None:
            if is_agent_filename(walker.f_code.co_filename):
                found.append((walker.f_code.co_filename, walker.f_lineno))
                break
            walker = walker.f_back
    if len(found) != 1:
        return None
    return linecache.getline(*found[0]).strip() or None


def _timeout_of(request: Any) -> float | None:
    """The policy's ``ask`` timeout: ``request.timeout`` or ``details["timeout_s"]``, else None."""
    timeout = getattr(request, "timeout", None)
    if timeout is None:
        timeout = request.details.get("timeout_s")
    return float(timeout) if timeout is not None else None


def _on_timeout_of(request: Any) -> str:
    """``request.on_timeout`` or ``details["on_timeout"]``: ``allow`` only if it says so."""
    value = getattr(request, "on_timeout", None) or request.details.get("on_timeout")
    return "allow" if value == "allow" else "deny"


def _question_prompt(record: ApprovalRecord) -> str:
    return _QUESTION_PROMPT.format(id=record.id, question=record.summary)


def _local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


class _StdinPrompt:
    """One ``input_request`` on the kernel's stdin socket, polled so that it can be abandoned.

    ``Kernel.raw_input`` would block until the console answers, even after a widget or the CLI
    decided. This sends the same message but polls for the reply in short slices. It needs the
    routing identity of the requesting frontend, which ipykernel keeps in ``_parent_ident``
    (private; present in ipykernel 6 and 7, pinned <8 and exercised by the stdin test).
    """

    def __init__(self, kernel: Any, parent: dict[str, Any]) -> None:
        self.kernel = kernel
        self.parent = parent
        self.ident = kernel._parent_ident["shell"]

    def ask(self, text: str) -> None:
        import zmq

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        socket = self.kernel.stdin_socket
        while True:  # drop replies to an abandoned earlier prompt
            try:
                socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        self.kernel.session.send(
            socket,
            "input_request",
            {"prompt": text, "password": False},
            self.parent,
            ident=self.ident,
        )

    def poll(self, timeout: float) -> tuple[str, str] | None:
        """(answer, username) if the frontend replied within ``timeout`` seconds."""
        import zmq

        socket = self.kernel.stdin_socket
        readable, _, failed = zmq.select([socket], [], [socket], timeout)
        if not (readable or failed):
            return None
        _ident, reply = self.kernel.session.recv(socket)
        if reply is None:
            return None
        value = str(reply.get("content", {}).get("value", ""))
        user = reply.get("header", {}).get("username") or _local_user()
        return value, f"{user}"
