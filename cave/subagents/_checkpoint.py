"""Sub-agents in checkpoints: each one's policy and grants, conversation and namespace.

Captured into the checkpoint's (signed) JSON state: each namespace object pickled on its own
with cloudpickle (base64), so one bad object is reported by name and the rest come back. Not
incremental like the main namespace: a sub-agent's objects are written whole at every save, so
keep big data in the main namespace and hand it over with ``inject``.

On restore, sub-agents of the session are replaced by the saved ones, each attenuated again
against the restoring session's authority (``Security.spawn``), then given its saved policy and
grants back (a grant never overrides a deny, of the child or of its parent).
"""

from __future__ import annotations

import base64
from typing import Any

__all__ = ["apply_subagents", "capture_subagents"]


def capture_subagents(session: Any) -> list[dict[str, Any]]:
    registry = session.subagents
    return [agent.snapshot() for agent in registry.all()] if registry is not None else []


def apply_subagents(session: Any, saved: Any) -> list[Any]:
    import cloudpickle

    from ..checkpoint._protocol import Problem
    from ..security import Policy
    from ._agent import SubAgent
    from ._registry import registry_for

    registry = registry_for(session)
    for old in registry.all():  # replaced by the saved ones: their authority ends here
        old._security.close()
    registry.clear()
    problems: list[Any] = []
    for item in saved or []:
        name = str(item["name"])
        security = session.ensure_security()
        given = item.get("given")
        if given is None:
            policy = dict(item["security"]["policy"])
            policy["workspace"] = str(session.workspace)
            given = Policy.from_dict(policy)
        child = security.spawn(name, given)
        snapshot = dict(item["security"])
        if "policy" in snapshot:
            snapshot["policy"] = {**snapshot["policy"], "workspace": str(session.workspace)}
        child.restore(snapshot)
        registry.extend_child(child)
        agent = SubAgent._spawned(
            session, name, child, security.handle, item.get("model"),
            item.get("instructions", ""), given,
        )
        agent.history[:] = list(item.get("history", []))
        injected = dict(item.get("injected", {}))
        for key, blob in dict(item.get("objects", {})).items():
            try:
                value = cloudpickle.loads(base64.b64decode(blob))
            except Exception as exc:
                problems.append(Problem(f"{name}.{key}", "?", str(exc)[:300], "restore"))
                continue
            if key in injected:
                agent.runtime.inject(key, value, injected[key])
            else:
                agent.runtime.namespace[key] = value
        for key, reason in dict(item.get("problems", {})).items():
            problems.append(Problem(f"{name}.{key}", "?", reason, "save"))
    return problems
