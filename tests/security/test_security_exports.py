"""The public names of ``cave.security`` (pinned: changing them is an API change)."""

from __future__ import annotations

import cave.security


def test_security_exports_are_pinned() -> None:
    assert sorted(cave.security.__all__) == [
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
    for name in cave.security.__all__:
        assert getattr(cave.security, name) is not None


def test_importing_security_installs_nothing() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cave.security\n"
        "box = []\n"
        "sys.audit('cave.security', 'ping', (), box)\n"
        "import _thread\n"
        "print(box, _thread.start_new_thread.__module__ if hasattr(_thread.start_new_thread, "
        "'__module__') else None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] _thread", out.stdout  # no hook, no patches until Security()
