"""Wiring shared by the kernel and browser tests of approvals (not a test module)."""

from __future__ import annotations

# Until the kernel wires approvals and the authority layer into the session by itself, this cell
# does it with the real pieces: Security (primitives + guard), AuditLog, KernelApprovalChannel.
# Once the kernel does it, both branches are skipped.
WIRING = r"""
import cave
_ip = get_ipython()
_session = cave.session()
if "approvals" not in _ip.magics_manager.magics["line"]:
    from cave.approvals import install
    install(_ip.kernel)
if "fs" not in _session.runtime.primitives:
    from cave.approvals import session_channel
    from cave.security import AuditLog, Policy, Security
    if _session.audit is None:
        _session.audit = AuditLog(_session.directory / "audit.jsonl")
    _security = Security(
        workspace=_session.workspace, policy=Policy.default(_session.workspace),
        channel=session_channel(_ip.kernel), audit=_session.audit,
        session_dir=_session.directory)
    for _name, _primitive in _security.primitives.items():
        _session.runtime.add_primitive(_name, _primitive)
    _session.code_context = _security.agent_code
    _session.primitives_doc = _security.describe_primitives()
"""
