"""The Dask policy: agent code may reach the scheduler of a client the *user* injected, and no more.

Decided for issue 13. When the user injects a ``distributed.Client`` (``cave.inject("client",
client)``), the next turn adds one policy rule, ``allow net:HOST:PORT``, for that client's
scheduler address, and the policy change is written to the audit log like any other
(``policy.change`` with ``by="injected Dask client 'client' (scheduler tcp://...)"``). So:

* computing through the injected client (``ddf.x.sum().compute()``, ``client.submit``) never
  asks. That traffic runs on the client's own event-loop thread, which the user started, so the
  guard does not see it anyway (docs/security.md: work handed to threads that already existed);
* agent code that opens its *own* connection to that scheduler (``Client("tcp://HOST:PORT")``,
  ``distributed.rpc``) is allowed without a question per connection;
* every other address still follows the policy (``ask`` by default): other schedulers, the
  workers' addresses when the agent's own client talks to them directly, anything else.
  A ``deny`` rule that covers the scheduler (``deny net:*``) still wins; then nothing is added.

Not enforced: what the scheduler's workers do. Tasks the agent submits run in the workers'
processes, outside this kernel and its guard, with the workers' own authority. Only inject a
client for a cluster whose workers may run code the agent writes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

__all__ = ["grant_injected_schedulers", "scheduler_capability"]

_CLIENT = ("distributed.client", "Client")


def _is_client(obj: Any) -> bool:
    return any(
        getattr(c, "__module__", "") == _CLIENT[0] and c.__name__ == _CLIENT[1]
        for c in type(obj).__mro__
    )


def scheduler_capability(address: str) -> str | None:
    """``tcp://10.0.0.5:8786`` -> ``net:10.0.0.5:8786``; None for in-process (``inproc://``)."""
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls", "ws", "wss") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"net:{host}:{parts.port}" if parts.port else f"net:{host}"


def grant_injected_schedulers(session: Any) -> None:
    """``before_turn`` hook: one ``allow`` rule per injected client's scheduler, audited once."""
    security = getattr(session, "security", None)
    if security is None:
        return
    runtime = session.runtime
    for name in list(runtime.injected):
        obj = runtime.namespace.get(name)
        if obj is None or not _is_client(obj):
            continue
        address = getattr(getattr(obj, "scheduler", None), "address", None)
        cap = scheduler_capability(address) if isinstance(address, str) else None
        if cap is None:
            continue
        policy = security.policy
        if any(r.capability == cap and r.effect.value == "allow" for r in policy.rules):
            continue  # granted on an earlier turn (or by the user)
        from .security._capabilities import Capability

        kind, _, resource = cap.partition(":")
        if policy.decide(Capability(kind, resource)).effect.value == "deny":
            continue  # the user's deny wins; the agent will be told so when it tries
        security.with_policy(
            policy.with_rules((cap, "allow")),
            by=f"injected Dask client {name!r} (scheduler {address})",
        )
