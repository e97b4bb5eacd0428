"""Wiring shared by the kernel and browser tests of approvals (not a test module)."""

from __future__ import annotations

# Until the kernel wires approvals and the primitives into the session by itself, this cell does
# it with the real pieces (SessionAuthority, AuditLog, KernelApprovalChannel) and a minimal
# fs.write primitive that asks the authority like the real one does.
WIRING = r"""
import hashlib, os, cave
from pathlib import Path
_ip = get_ipython()
_session = cave.session()
if "approvals" not in _ip.magics_manager.magics["line"]:
    from cave.approvals import install
    install(_ip.kernel)
if "fs" not in _session.runtime.primitives:
    from cave.approvals import session_channel
    from cave.security import AuditLog, Policy
    from cave.security._capabilities import Capability
    from cave.security._engine import SessionAuthority
    if _session.audit is None:
        _session.audit = AuditLog(_session.directory / "audit.jsonl")
    _authority = SessionAuthority(
        workspace=_session.workspace, policy=Policy.default(_session.workspace),
        channel=session_channel(_ip.kernel), audit=_session.audit, protected=[_session.directory])

    class _FS:
        def write(self, path, text):
            real = os.path.realpath(path)
            data = text.encode()
            permit = _authority.authorize(
                Capability("fs.write", real), origin="fs.write",
                summary=f"write {len(data):,} bytes to {real}",
                details={"path": real, "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest(), "preview": text[:500]},
                code_line=f"fs.write({path!r}, ...)")
            ok = False
            try:
                Path(real).write_bytes(data)
                ok = True
            finally:
                _authority.settle(permit, ok=ok)
            return len(data)

    _session.runtime.add_primitive("fs", _FS())
"""
