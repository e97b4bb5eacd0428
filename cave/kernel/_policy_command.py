"""``%cave policy``: show the effective policy, change it for this session, or reload the files.

Parsing happens here (the edge); the policy itself is a frozen value owned by the security layer,
and every change goes through ``Security.with_policy`` so it is audited as a policy change.
"""

from __future__ import annotations

from .._errors import ConfigError
from .._session import current_session

USAGE = """\
%cave policy                            the effective policy
%cave policy allow|ask|deny CAPABILITY  add a rule for this session (e.g. ask net:*.example.com)
%cave policy ask CAPABILITY timeout=SECONDS [on_timeout=deny|allow]   ask, and decide alone
%cave policy remove CAPABILITY          drop the session's rule for exactly CAPABILITY
%cave policy reload                     re-read cave.toml and the user policy file
Capabilities: fs.read:GLOB fs.write:GLOB fs.delete:GLOB shell:PROGRAM net:HOST[:PORT] env:NAME"""


def policy_command(args: list[str]) -> None:
    from ..security import format_policy, load_policy, parse_rule

    security = current_session().ensure_security()
    if security is None:
        raise ConfigError("This session runs without the security layer (secure=False).")
    if not args:
        print(format_policy(security.policy))
        return
    verb, rest = args[0].lower(), " ".join(args[1:]).strip()
    if verb in ("help", "-h", "--help"):
        print(USAGE)
        return
    if verb == "reload":
        security.with_policy(load_policy(security.workspace), by="%cave policy reload")
    elif verb == "remove" and rest:
        policy = security.policy
        if not any(r.capability == rest for r in policy.rules):
            raise ConfigError(f"No rule for exactly {rest!r}. `%cave policy` lists the rules.")
        security.with_policy(policy.without(rest), by="%cave policy remove")
    elif verb in ("allow", "ask", "deny") and rest:
        try:
            rule = parse_rule(f"{verb} {rest}", source="%cave policy")
        except ValueError as exc:
            raise ConfigError(f"{exc}.\n{USAGE}") from None
        security.with_policy(
            security.policy.without(rule.capability).with_rules(rule), by="%cave policy"
        )
    else:
        raise ConfigError(f"Cannot understand `%cave policy {' '.join(args)}`.\n{USAGE}")
    print(format_policy(security.policy))
