"""The public API is exactly what ``__all__`` says (STYLE.md 1); changing it is a deliberate act."""

from __future__ import annotations

import cave

PUBLIC = {
    "ApprovalError", "AuditChainBroken", "AuthorityError", "CaveError", "CheckpointError",
    "CheckpointNotFound", "CheckpointTampered", "ConfigError", "MaxStepsReached", "MissingAPIKey",
    "ModelError", "ModelResponseError", "NameNotFound", "PolicyFileError", "RuntimeStateError",
    "ToolError", "TurnInterrupted", "TurnStopped", "TypeChangeRefused", "__version__", "inject",
    "load_ipython_extension", "retrieve", "session", "set_model", "update",
    "StrictModeUnavailable",
    "tools",
    "Agent", "SkillError",
}
PUBLIC |= {"BudgetReached", "EmptyModelReply"}  # issue 11: long sessions


def test_all_is_pinned() -> None:
    assert set(cave.__all__) == PUBLIC
    for name in cave.__all__:
        assert hasattr(cave, name), name


def test_every_error_is_a_cave_error_with_a_fix_in_its_message() -> None:
    errors = [getattr(cave, n) for n in cave.__all__ if n.endswith(("Error", "Broken", "Key",
                                                                     "Found", "Tampered", "Refused",
                                                                     "Reached", "Interrupted",
                                                                     "Stopped", "Unavailable"))]
    assert all(issubclass(e, cave.CaveError) for e in errors)
    message = str(cave.MissingAPIKey())
    assert "ANTHROPIC_API_KEY" in message and "ANTHROPIC_BASE_URL" in message


def test_inject_and_retrieve_outside_a_kernel_keep_identity() -> None:
    obj = object()
    cave.inject("the_object", obj, description="identity check")
    assert cave.retrieve("the_object") is obj
    cave.session().runtime.remove("the_object")


def test_tools_exports_are_pinned() -> None:
    assert sorted(cave.tools.__all__) == [
        "ToolLimits", "ToolSpec", "call", "register", "registered", "set_limits", "unregister",
    ]
