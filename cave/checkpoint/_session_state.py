"""What a checkpoint holds of a `Session`, and how it is put back: all or nothing.

`capture(session)` returns what the store saves: the live agent namespace and a JSON *state*
(format version, conversation, injected descriptions, policy and grants, pending approvals, model
and agent settings, audit head). `apply(session, ...)` is its inverse, and all or nothing:
the store verifies every byte before unpickling; then the state is checked, and only if both
succeed are the runtime, conversation, settings, grants and approvals replaced. Any failure puts
the namespace back exactly as it was (same objects) and changes nothing else.

What a restore means for each part:

* Objects: every saved name comes back; names made after the checkpoint are removed; a name the
  checkpoint could not carry (unpicklable when saved, or failing to rebuild) keeps its current
  value if it has one, and is reported. Agent-defined functions get the live namespace as globals.
* Conversation: replaced by the saved one, so the model sees the same history. A checkpoint saved
  while a turn was still running (from a kernel subshell) closes that turn in its copy: tool calls
  that had not finished get a result saying so, and a note says the turn did not finish there.
* Policy and grants: replaced (``Security.restore``). The policy's workspace becomes the restoring
  session's workspace, so workspace-relative rules follow the session; grants keep their paths.
* Pending approvals: submitted again to the restoring session's queue, pending, under new ids
  (details name the old id). Deciding one later runs nothing: an approval becomes a grant at the
  start of the next turn (``once`` or ``session``, as chosen), so the agent's next attempt at that
  capability is allowed without asking. A request's policy timeout restarts at restore.
  (`_session_approvals`.)
* Model and agent settings: replaced by the saved ones. The audit head is recorded, not replayed.
* Budget limits, the session's running totals (steps, tokens, cost) and the compaction summary:
  replaced by the saved ones (a checkpoint from before they were saved gives fresh ones).

Not guaranteed: a consistent snapshot of objects that another thread mutates while `save` runs
(the kernel saves between turns; a subshell save during a turn sees whatever the namespace holds).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import CheckpointError
from ._protocol import CheckpointInfo, Problem, Restored
from ._session_approvals import pending_approvals, reconcile_approvals, resubmit

if TYPE_CHECKING:
    from .._session import Session

__all__ = ["STATE_VERSION", "RestoreReport", "apply", "capture", "skip_names"]

STATE_VERSION = 1
RESERVED = frozenset({"exit", "quit"})


def skip_names(session: Session) -> set[str]:
    """Names the restoring session provides itself: the primitives and ``exit``/``quit``."""
    return set(session.runtime.primitives) | RESERVED


# --- capture -------------------------------------------------------------------------------------


def capture(session: Session) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """(live namespace, JSON state) of ``session``, ready for ``SessionStore.save``.

    Builds the security layer if it is not yet (so the primitives exist to be skipped and the
    policy and grants can be recorded).
    """
    security = session.ensure_security()
    reconcile_approvals(session)
    runtime = session.runtime
    audit = session.audit
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "workspace": str(session.workspace),
        "history": _history_copy(session.history, open_turn=session.busy),
        "injected": {
            name: {"description": info.description, "injected_at": info.injected_at}
            for name, info in runtime.injected.items()
        },
        "security": security.snapshot() if security is not None else None,
        "approvals": pending_approvals(session),
        "model": {
            "name": session.model_settings.name,
            "base_url": session.model_settings.base_url,
        },
        "agent": dataclasses.asdict(session.agent_settings),
        "audit_head": list(audit.head) if audit is not None else None,
        "parts": {name: save() for name, (save, _) in session.state_parts.items()},
        "budget": dataclasses.asdict(session.budget),
        "totals": session.totals.to_dict(),
        "context": {"summary": session.compactor.summary, "covered": session.compactor.covered},
    }
    return runtime.namespace, state


_OPEN_TURN_NOTE = (
    "[Checkpoint: this turn was still running when the session was saved; what it did after "
    "this point is not part of the checkpoint.]"
)


def _history_copy(history: list[dict[str, Any]], *, open_turn: bool) -> list[dict[str, Any]]:
    try:
        messages: list[dict[str, Any]] = json.loads(json.dumps(list(history)))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"The conversation holds something that is not JSON ({exc}); `%cave reset` clears it "
            "(the agent's variables stay), then save again."
        ) from None
    if not open_turn or not messages:
        return messages
    last = messages[-1]
    note = {"type": "text", "text": _OPEN_TURN_NOTE}
    if last["role"] == "assistant":
        pending = [b["id"] for b in last["content"] if b.get("type") == "tool_use"]
        results: list[dict[str, Any]] = [
            {
                "type": "tool_result",
                "tool_use_id": i,
                "content": [
                    {"type": "text", "text": "Not finished in this checkpoint (saved mid-step)."}
                ],
                "is_error": True,
            }
            for i in pending
        ]
        messages.append({"role": "user", "content": [*results, note]})
    else:
        content = last["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        last["content"] = [*blocks, note]
    return messages


# --- apply ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreReport:
    """What `restore` put back, and what it could not."""

    name: str
    objects: tuple[str, ...]
    """Names restored from the checkpoint."""
    problems: tuple[Problem, ...]
    """Names the checkpoint could not carry (``phase`` save) or rebuild (``phase`` restore)."""
    kept: tuple[str, ...]
    """Of those, names that keep the value they had before the restore."""
    messages: int
    grants: int
    approvals: tuple[tuple[str, str, str], ...]
    """(new id, old id, capability) of each approval request that is pending again."""
    info: CheckpointInfo | None

    def summary(self) -> str:
        saved = f" (saved {self.info.created:%Y-%m-%d %H:%M:%S} UTC)" if self.info else ""
        lines = [
            f"Restored checkpoint {self.name!r}{saved}: {len(self.objects)} objects, "
            f"{self.messages} messages of conversation, {self.grants} grants."
        ]
        for p in self.problems:
            what = "not saved" if p.phase == "save" else "not restored"
            kept = "; kept its current value" if p.name in self.kept else ""
            lines.append(f"  {what}: {p.name} ({p.type}): {p.reason}{kept}")
        for new, old, capability in self.approvals:
            lines.append(
                f"  approval request {new} (was {old}) is pending again: {capability}. Deciding "
                "it runs nothing; an approval applies to the agent's next attempt."
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class _Plan:
    """The state of a checkpoint, checked and converted before anything is changed."""

    history: list[dict[str, Any]]
    injected: dict[str, Any]
    security: dict[str, Any] | None
    approvals: list[dict[str, Any]]
    model: Any
    agent: Any
    audit_head: Any
    budget: Any = None
    totals: Any = None
    context: Any = None
    parts: tuple[tuple[str, Callable[[], Any]], ...] = ()
    """(name, step) applying each extra part (``Session.state_parts``), checked already."""


def _plan(state: Mapping[str, Any], session: Session, name: str) -> _Plan:
    from ..runtime._namespace import InjectedInfo

    # The settings types are the session's own (the agent layer defines them, above us).
    model_settings_type = type(session.model_settings)
    agent_settings_type = type(session.agent_settings)

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(
            f"Checkpoint {name!r} has a session state this Cave cannot use: {problem}. Nothing "
            "was changed. Restore it with the Cave version that saved it, or pick another one "
            "(`%checkpoint list`)."
        )

    version = state.get("version")
    if version != STATE_VERSION:
        raise bad(f"state format {version!r}, this Cave reads {STATE_VERSION}")
    try:
        history = list(state["history"])
        if not all(isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in history):
            raise ValueError("a message without a user/assistant role")
        injected = {
            str(n): InjectedInfo(i.get("description"), float(i["injected_at"]))
            for n, i in dict(state.get("injected") or {}).items()
        }
        snapshot = state.get("security")
        if snapshot is not None:
            from ..security import Policy

            snapshot = dict(snapshot)
            if "policy" in snapshot:
                policy = dict(snapshot["policy"])
                policy["workspace"] = str(session.workspace)  # rules follow the session
                Policy.from_dict(policy)  # raises ValueError if malformed
                snapshot["policy"] = policy
            for g in snapshot.get("grants", ()):
                if g["scope"] not in ("once", "session") or not str(g["capability"]):
                    raise ValueError(f"a malformed grant {g!r}")
        model = model_settings_type(**dict(state.get("model") or {}))
        known = {f.name for f in dataclasses.fields(agent_settings_type)}
        saved = dict(state.get("agent") or {})
        agent = agent_settings_type(**{k: v for k, v in saved.items() if k in known})
        approvals = [dict(a) for a in state.get("approvals") or ()]
        for a in approvals:
            str(a["capability"]), str(a["summary"])
        saved_parts = dict(state.get("parts") or {})
        parts = tuple(
            (part, prepare(saved_parts.get(part)))
            for part, (_, prepare) in session.state_parts.items()
        )
        budget, totals, context = _budget_plan(state, len(history), session)
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(str(exc)) from None
    return _Plan(
        history, injected, snapshot, approvals, model, agent, state.get("audit_head"),
        budget, totals, context, parts,
    )


def _budget_plan(
    state: Mapping[str, Any], messages: int, session: Session
) -> tuple[Any, Any, Any]:
    """Budget, totals and compaction state (absent from checkpoints older than them: fresh).

    Built with the session's own types (the agent layer defines them, above us).
    """
    Budget, Totals, Compactor = (  # noqa: N806
        type(session.budget), type(session.totals), type(session.compactor)
    )

    known = {f.name for f in dataclasses.fields(Budget)}
    budget = Budget(**{k: v for k, v in dict(state.get("budget") or {}).items() if k in known})
    totals = Totals.from_dict(dict(state["totals"])) if state.get("totals") else Totals()
    compactor = Compactor()
    context = dict(state.get("context") or {})
    if context.get("summary") is not None and 0 < int(context["covered"]) <= messages:
        compactor.summary, compactor.covered = str(context["summary"]), int(context["covered"])
    return budget, totals, compactor


def apply(
    session: Session,
    source: str | Restored,
    load: Callable[[str, MutableMapping[str, Any]], Restored],
) -> tuple[RestoreReport, Any]:
    """Put checkpoint ``source`` into ``session``, all or nothing; returns (report, its audit head).

    Refused while a turn runs. ``load(name, into)`` reads a named checkpoint into the live
    namespace; it runs after the current names are set aside, so its failure is rolled back like
    any other. A `Restored` ``source`` has its objects copied into the runtime instead.
    """
    security = session.ensure_security()  # primitives are bound before anything is unpickled
    runtime = session.runtime
    ns = runtime.namespace
    skip = skip_names(session)

    def movable(n: object) -> bool:
        dunder = isinstance(n, str) and n.startswith("__") and n.endswith("__")
        return isinstance(n, str) and not dunder and n not in skip

    with session.exclusive("restore a checkpoint"):
        old_injected = dict(runtime.injected)
        before = {n: v for n, v in ns.items() if movable(n)}
        for n in before:
            runtime.remove(n)
        try:
            if isinstance(source, Restored):
                restored = source
                name = restored.info.name if restored.info else "(loaded)"
                if restored.namespace is not ns:
                    for n, v in restored.namespace.items():
                        if movable(n):
                            ns[n] = v
            else:
                name = source
                restored = load(name, ns)
            plan = _plan(restored.state, session, name)
        except BaseException:
            for n in [k for k in ns if movable(k)]:
                del ns[n]
            for n, v in before.items():
                runtime.restore(n, v, old_injected.get(n))
            raise
        problems = [
            *(restored.info.unpicklable if restored.info else ()),
            *restored.problems,
        ]
        names = tuple(n for n in ns if movable(n))
        for n in names:
            runtime.restore(n, ns[n], plan.injected.get(n))
        kept = []
        for p in problems:
            if p.name not in ns and p.name in before:
                runtime.restore(p.name, before[p.name], old_injected.get(p.name))
                kept.append(p.name)
        session.history[:] = plan.history
        if plan.model != session.model_settings:
            session.set_model(settings=plan.model)
        session.agent_settings = plan.agent
        session.budget, session.totals, session.compactor = plan.budget, plan.totals, plan.context
        grants = 0
        if security is not None and plan.security is not None:
            security.restore(plan.security)
            grants = len(security.grants)
        pending = resubmit(session, plan.approvals, name)
        for part, step in plan.parts:
            try:
                problems.extend(step() or ())
            except Exception as exc:  # a part that cannot come back is reported, not fatal
                problems.append(Problem(part, "part", f"{type(exc).__name__}: {exc}", "restore"))
    report = RestoreReport(
        name,
        names,
        tuple(problems),
        tuple(kept),
        len(plan.history),
        grants,
        tuple(pending),
        restored.info,
    )
    return report, plan.audit_head
