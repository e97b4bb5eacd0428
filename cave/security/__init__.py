"""The authority layer: capabilities, policy, grants, the in-process guard and the audit log.

What is enforced, exactly, and what is not: see ``docs/security.md``. In short: agent code that
uses the primitives or raw Python side effects (open, subprocess, sockets, ...) is checked against
the policy while it runs inside ``Security.agent_code()``; user cells and kernel threads are not.
It is a guard against a mistaken or prompt-injected agent, not a sandbox.
"""

from ._audit import AuditLog, AuditSink, VerifyReport, format_records, verify
from ._capabilities import Capability
from ._facade import Security
from ._grants import Grant
from ._policy import Effect, Policy, Rule, Verdict, parse_rule
from ._policy_file import format_policy, load_policy
from ._primitives import Response

__all__ = [
    "AuditLog",
    "AuditSink",
    "Capability",
    "Effect",
    "Grant",
    "Policy",
    "Response",
    "Rule",
    "Security",
    "Verdict",
    "VerifyReport",
    "format_policy",
    "format_records",
    "load_policy",
    "parse_rule",
    "verify",
]
