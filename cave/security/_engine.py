"""The decision engine of one session: protected paths, policy, grants, asking, auditing.

``authorize`` answers one capability request with a ``Permit`` or raises ``PermissionError``:

1. a protected path (the session directory, the audit log): **deny**, whatever the policy says;
2. a ``deny`` rule: **deny**;
3. a grant that covers the capability: allow (a once grant is *taken*; ``settle(ok=False)``
   puts it back, so it is consumed only when the operation succeeds);
4. the policy's verdict: ``allow``, ``deny``, or ``ask``, which goes to the approval channel.

The channel is called on a helper thread (``run_aside``) while the caller waits, so a channel may
do its own file and socket I/O without that I/O being checked against the agent's policy, and
the wait stays interruptible (a ``KeyboardInterrupt`` in the waiting thread cancels the request).

An ``ask`` rule with ``timeout=N`` puts the timeout on the request; the channel expires it at the
deadline and returns ``Decision.EXPIRED``, and the rule's ``on_timeout`` decides (deny, or allow
when the rule says so). A channel that ignores timeouts is cancelled by the engine itself
``TIMEOUT_GRACE_S`` after the deadline, and that counts as expired too: the timeout holds for
every channel, give or take the grace.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..approvals._protocol import ApprovalRequest, Decision
from ._audit import AuditSink
from ._capabilities import FS_KINDS, Capability
from ._grants import ONCE, SESSION, Grant, GrantBook
from ._policy import Effect, Policy, Verdict

__all__ = ["Permit", "SessionAuthority", "StartThread", "TIMEOUT_GRACE_S"]

T = TypeVar("T")
TIMEOUT_GRACE_S = 2.0
"""How long after an ask's deadline the engine cancels a channel that has not expired it."""
StartThread = Callable[[Callable[[], None]], Any]
"""Starts ``fn`` on a new thread that is *not* agent code (the guard hands over the original)."""


@dataclass(frozen=True)
class Permit:
    """Permission for one operation, returned by ``authorize``; hand it back to ``settle``."""

    capability: Capability
    via: str
    """``policy``, ``grant`` or ``approval``."""
    reason: str
    grant: Grant | None = None
    """A once grant taken for this operation (put back if it fails)."""


class SessionAuthority:
    """Decides for one session. Thread-safe; a decision never holds the lock while asking."""

    def __init__(
        self,
        *,
        workspace: Path,
        policy: Policy,
        channel: Any,
        audit: AuditSink,
        protected: Sequence[Path | str] = (),
        start_thread: StartThread | None = None,
    ) -> None:
        self.workspace = Path(os.path.realpath(workspace))
        self._policy = policy
        self.channel = channel
        self.audit = audit
        # Bound methods, taken now: replacing channel.decide or audit.record later (they are
        # objects agent code can reach) does not change what this session calls.
        self._decide = channel.decide
        self._answer = getattr(channel, "answer", None)
        self._write = audit.record
        self.protected = tuple(os.path.realpath(p) for p in protected)
        self._start_thread = start_thread or _plain_thread
        self._lock = threading.Lock()
        self._grants = GrantBook()
        self._pending: dict[str, threading.Event] = {}

    # -- policy ----------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self._policy

    def set_policy(self, policy: Policy, *, by: str = "session") -> None:
        old = self._policy
        self._policy = policy
        before = {str(r) for r in old.rules}
        after = {str(r) for r in policy.rules}
        self._record(
            "policy.change",
            by=by,
            added=sorted(after - before),
            removed=sorted(before - after),
            fallback=policy.fallback.value,
            rules=len(policy.rules),
        )

    # -- deciding --------------------------------------------------------------------------
    def authorize(
        self,
        capability: Capability,
        *,
        origin: str,
        summary: str,
        details: Mapping[str, Any] | None = None,
        code_line: str | None = None,
        grant_as: str | None = None,
        at_least_ask: bool = False,
    ) -> Permit:
        """A permit, or ``PermissionError`` saying why not.

        ``at_least_ask``: an ``allow`` verdict asks anyway (a grant still counts); the guard uses
        it for writes to environment names the default policy lets agent code *read*.

        ``origin``: what asked (``fs.write`` for a primitive, ``guard:open`` for a raw event).
        ``grant_as``: the capability an approval grants, if broader than the request (a
        recursive delete grants ``fs.delete:DIR/**``).
        """
        protected = self._protected(capability)
        if protected is not None:
            self._record_denial(capability, origin, summary, f"protected path {protected}")
            raise PermissionError(
                f"{origin}: {capability} is denied: {protected} belongs to Cave's session "
                "(audit log, approvals, checkpoints) and agent code may never touch it"
            )
        verdict = self._policy.decide(capability)
        if verdict.effect is Effect.DENY:
            self._record_denial(capability, origin, summary, verdict.reason)
            raise PermissionError(
                f"{origin}: {capability} is denied by the policy ({verdict.reason}). Do not "
                "retry; tell the user what you needed and why, they can change the policy."
            )
        with self._lock:
            grant = self._grants.find(capability)
            if grant is not None and grant.scope == ONCE:
                self._grants.consume(grant)  # taken; settle(ok=False) puts it back
        if grant is not None:
            return Permit(
                capability,
                "grant",
                f"{grant.scope} grant {grant.id}",
                grant if grant.scope == ONCE else None,
            )
        if verdict.effect is Effect.ALLOW and not at_least_ask:
            return Permit(capability, "policy", verdict.reason)
        return self._ask(capability, verdict, origin, summary, details or {}, code_line, grant_as)

    def settle(self, permit: Permit, *, ok: bool) -> None:
        """After the operation: a once grant is consumed if ``ok``, put back if not."""
        if permit.grant is None:
            return
        if ok:
            self._record(
                "grant.used", capability=permit.grant.capability, grant=permit.grant.id, scope=ONCE
            )
            return
        with self._lock:
            self._grants.put_back(permit.grant)

    def ask_human(
        self, question: str, *, origin: str = "human.ask", timeout: float | None = None
    ) -> str:
        """Put a free-text question to the person; PermissionError if nobody answers (within
        ``timeout`` seconds, when given: the request expires in the queue like a policy ask)."""
        request = self._request(
            Capability("human", "ask"), question, {"question": question}, None, timeout
        )
        timed_out = threading.Event()
        started = time.monotonic()
        answer = self._aside(
            lambda cancelled: _answer(self._decide, self._answer, request, cancelled),
            request,
            timeout,
            timed_out,
        )
        answered: dict[str, Any] = {}
        if answer is not None:  # its length and hash, not the text: see docs/approvals.md
            answered = {
                "answer_chars": len(answer),
                "answer_sha256": hashlib.sha256(answer.encode("utf-8")).hexdigest(),
            }
        if timeout is not None:
            answered["timeout_s"] = timeout
        self._record(
            "human.ask", id=request.id, question=question, answered=answer is not None, **answered
        )
        if answer is None:
            why = (
                f"nobody answered within {timeout:g} s"
                if timeout is not None
                and (timed_out.is_set() or time.monotonic() - started >= timeout)
                else "the person declined it, or it was cancelled or expired"
            )
            raise PermissionError(
                f"{origin}: nobody answered the question (request {request.id}: {why}). "
                "Continue without it, or end the turn and ask in your reply."
            )
        return answer

    def cancel_pending(self) -> int:
        """Cancel every request waiting for a person (the stop button); returns how many."""
        with self._lock:
            events = list(self._pending.values())
        for event in events:
            event.set()
        return len(events)

    # -- grants (checkpoints) --------------------------------------------------------------
    def grants(self) -> tuple[Grant, ...]:
        """Copies: a frozen dataclass can still be changed with object.__setattr__."""
        with self._lock:
            return tuple(g.copy() for g in self._grants.all())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"policy": self._policy.to_dict(), "grants": self._grants.snapshot()}

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        policy = Policy.from_dict(snapshot["policy"]) if "policy" in snapshot else self._policy
        grants: Iterable[Mapping[str, Any]] = snapshot.get("grants", ())
        with self._lock:
            self._grants.restore(grants)
        if policy != self._policy:
            self.set_policy(policy, by="restore")
        self._record("grants.restore", grants=len(self._grants.all()))

    def grant_session(
        self, capabilities: Iterable[Capability], *, because: str, request_id: str | None
    ) -> list[str]:
        """Session grants for ``capabilities`` that no deny covers (a skill approved by a
        person); returns those it refused. Callers: vault operations only."""
        refused: list[str] = []
        for capability in capabilities:
            if self.is_denied(capability):
                refused.append(str(capability))
                continue
            with self._lock:
                grant = self._grants.add(str(capability), SESSION, request_id)
            self._record(
                "grant", capability=str(capability), scope=SESSION, grant=grant.id,
                request=request_id, because=because,
            )
        return refused

    def allowed_by_policy(self, capability: Capability) -> bool:
        """The fast path of the guard: an ``allow`` verdict needs no grant, asks nobody."""
        if capability.kind in FS_KINDS and self._protected(capability) is not None:
            return False
        return self._policy.decide(capability).effect is Effect.ALLOW

    def session_grant_covers(self, capability: Capability) -> bool:
        """A session grant covers ``capability`` and nothing denies it (no permit needed)."""
        if self.is_denied(capability):
            return False
        with self._lock:
            grant = self._grants.find(capability)
        return grant is not None and grant.scope == SESSION

    def is_denied(self, capability: Capability) -> bool:
        """Denied by a protected path or a deny rule (grants and approvals cannot change it)."""
        if self._protected(capability) is not None:
            return True
        return self._policy.decide(capability).effect is Effect.DENY

    # -- internals -------------------------------------------------------------------------
    def _protected(self, capability: Capability) -> str | None:
        if capability.kind not in FS_KINDS:
            return None
        path = capability.resource
        for root in self.protected:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return root
        return None

    def _ask(
        self,
        capability: Capability,
        verdict: Verdict,
        origin: str,
        summary: str,
        details: Mapping[str, Any],
        code_line: str | None,
        grant_as: str | None,
    ) -> Permit:
        rule = verdict.rule
        timeout = rule.timeout if rule is not None else None
        on_timeout = rule.on_timeout.value if rule is not None and timeout is not None else "deny"
        request = self._request(capability, summary, details, code_line, timeout, on_timeout)
        started = time.monotonic()
        timed_out = threading.Event()
        decision = self._aside(
            lambda cancelled: self._decide(request, cancelled), request, timeout, timed_out
        )
        if timed_out.is_set() and decision in (None, Decision.CANCELLED, Decision.EXPIRED):
            decision = Decision.EXPIRED  # the channel ignored the deadline; the engine did not
        if not isinstance(decision, Decision):
            decision = Decision.DENY
        allowed_by_timeout = decision is Decision.EXPIRED and on_timeout == "allow"
        timing: dict[str, Any] = {}
        if timeout is not None:
            timing = {"timeout_s": timeout, "on_timeout": on_timeout}
        self._record(
            "approval",
            id=request.id,
            capability=request.capability,
            summary=summary,
            origin=origin,
            decision=decision.value,
            waited_s=round(time.monotonic() - started, 3),
            asked_because=verdict.reason,
            **timing,
        )
        if allowed_by_timeout:
            # Silence is consent, because the rule says so: this one operation, no grant.
            return Permit(
                capability,
                "timeout",
                f"nobody answered within {timeout:g} s and the rule says on_timeout=allow "
                f"({request.id})",
            )
        if not decision.approved:
            why = {
                Decision.DENY: "a person denied it",
                Decision.EXPIRED: (
                    f"nobody answered within the policy's timeout of {timeout:g} s, and the "
                    "rule says deny on timeout"
                    if timeout is not None
                    else "nobody answered in time"
                ),
                Decision.CANCELLED: "the request was cancelled (the turn was stopped)",
            }.get(decision, "it was not approved")
            raise PermissionError(
                f"{origin}: {capability} was not allowed: {why} (request {request.id}). Do not "
                "retry the same thing; continue without it or explain what you needed."
            )
        scope = SESSION if decision is Decision.APPROVE_SESSION else ONCE
        granted = grant_as or str(capability)
        with self._lock:
            grant = self._grants.add(granted, scope, request.id)
            if scope == ONCE:
                self._grants.consume(grant)  # taken by this very operation
        self._record("grant", capability=granted, scope=scope, grant=grant.id, request=request.id)
        return Permit(
            capability,
            "approval",
            f"approved {scope} ({request.id})",
            grant if scope == ONCE else None,
        )

    def _request(
        self,
        capability: Capability,
        summary: str,
        details: Mapping[str, Any],
        code_line: str | None,
        timeout: float | None = None,
        on_timeout: str = "deny",
    ) -> ApprovalRequest:
        return ApprovalRequest(
            id=uuid.uuid4().hex[:8],
            capability=str(capability),
            summary=summary,
            details=dict(details),
            code_line=code_line,
            created_at=time.time(),
            timeout=timeout,
            on_timeout=on_timeout,
        )

    def _aside(
        self,
        ask: Callable[[threading.Event], T],
        request: ApprovalRequest,
        timeout: float | None = None,
        timed_out: threading.Event | None = None,
    ) -> T | None:
        """Run ``ask`` on a helper thread and wait; an interrupt here cancels the request.

        With a ``timeout``, a channel still busy ``TIMEOUT_GRACE_S`` after it is cancelled and
        ``timed_out`` is set (the caller then counts a cancellation as an expiry).
        """
        give_up = None if timeout is None else time.monotonic() + timeout + TIMEOUT_GRACE_S
        cancelled = threading.Event()
        done = threading.Event()
        box: list[Any] = []
        context = contextvars.copy_context()  # the cell's output routing, for the channel

        def run() -> None:
            try:
                box.append(("ok", context.run(ask, cancelled)))
            except BaseException as exc:  # noqa: B036 - reported to the waiting thread
                box.append(("error", f"{type(exc).__name__}: {exc}"))
            finally:
                done.set()

        # One try around the start and the wait: an interrupt that lands right after the helper
        # thread started (before a nested try was entered) must cancel its request too, or the
        # channel would wait for a person forever.
        try:
            with self._lock:
                self._pending[request.id] = cancelled
            self._start_thread(run)
            while not done.wait(0.05):
                if give_up is None or time.monotonic() < give_up:
                    continue
                if timed_out is not None:
                    timed_out.set()
                if not cancelled.is_set():
                    cancelled.set()  # the channel ignored the deadline: stop asking
                elif time.monotonic() >= give_up + 5.0:
                    break  # ... and ignores being cancelled too: leave it, decide without it
        except BaseException:
            cancelled.set()  # the stop button: let the channel settle, then re-raise
            done.wait(5.0)
            raise
        finally:
            with self._lock:
                self._pending.pop(request.id, None)
        if not box or box[0][0] == "error":
            error = box[0][1] if box else "the channel did not answer"
            self._record("approval.error", id=request.id, error=str(error))
            return None
        result: T = box[0][1]
        return result

    def _record_denial(self, capability: Capability, origin: str, summary: str, why: str) -> None:
        self._record(
            "denied", capability=str(capability), origin=origin, summary=summary, reason=why
        )

    def record(self, kind: str, /, **fields: Any) -> None:
        """Write an audit record through the sink this session was given."""
        self._write(kind, **fields)

    _record = record


def _plain_thread(fn: Callable[[], None]) -> None:
    threading.Thread(target=fn, name="cave-approval", daemon=True).start()


def _answer(
    decide: Any, answer: Any, request: ApprovalRequest, cancelled: threading.Event
) -> str | None:
    if callable(answer):
        result = answer(request, cancelled)
        return None if result is None else str(result)
    decision = decide(request, cancelled)
    if decision in (Decision.APPROVE_ONCE, Decision.APPROVE_SESSION):
        return "yes"
    if decision is Decision.DENY:
        return "no"
    return None
