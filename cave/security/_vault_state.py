"""The records the guard's vault keeps: per-thread bindings, sessions, tickets, handles.

Plain data with no reference to the vault; only the vault creates instances, and only it holds
them (``_guard``'s module docstring says why that matters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._capabilities import Capability
from ._engine import SessionAuthority


class _Ticket:
    """What raw events a running primitive may cause (exact capabilities and subtrees)."""

    __slots__ = ("exact", "trees")

    def __init__(self, exact: set[str], trees: list[tuple[str, str]]) -> None:
        self.exact = exact
        self.trees = trees

    def covers(self, cap: Capability) -> bool:
        if str(cap) in self.exact:
            return True
        for kind, root in self.trees:
            if cap.kind == kind and (cap.resource == root or cap.resource.startswith(root + "/")):
                return True
        return False


class _Binding:
    """One thread running agent code for one session."""

    __slots__ = (
        "counts",
        "depth",
        "life",
        "names",
        "nonces",
        "popen",
        "session",
        "skip",
        "ticket",
        "trees",
    )

    def __init__(self, session: _Session, *, life: bool) -> None:
        self.session = session
        self.life = life
        """True for threads agent code started: agent code until they end."""
        self.nonces: list[object] = []
        self.depth = 0
        """>0 while the vault works on this thread's behalf."""
        self.ticket: _Ticket | None = None
        self.skip: tuple[str, Any] | None = None
        self.trees: list[str] = []
        self.names: dict[str, set[str]] = {}
        self.popen: str | None = None
        self.counts: dict[str, int] = {}


class _Session:
    """One ``Security`` instance's state, inside the vault."""

    __slots__ = (
        "authority", "env_set", "exec_marker", "ext_ops", "handle", "parent", "spawned",
        "workspace",
    )

    def __init__(
        self,
        handle: object,
        authority: SessionAuthority,
        exec_marker: str | None,
        parent: _Session | None = None,
    ) -> None:
        self.handle = handle
        self.authority = authority
        self.workspace = authority.workspace
        self.exec_marker = exec_marker
        self.spawned: set[int] = set()
        self.env_set: set[str] = set()
        """Environment names agent code set itself (it knows their values): readable freely."""
        self.parent = parent
        """The session this one was spawned from (a sub-agent's), or None."""
        self.ext_ops: dict[str, Callable[..., Any]] = {}
        """Operations added with ``Security.extend`` (skills, agents), run inside the vault."""

    def descends_from(self, other: _Session) -> bool:
        """True if ``other`` is this session's parent, grandparent, ... (not itself)."""
        node = self.parent
        while node is not None:
            if node is other:
                return True
            node = node.parent
        return False



class _Nested:
    """The nonce of a sub-agent's ``enter`` on a thread already running its parent's code."""

    __slots__ = ("outer",)

    def __init__(self, outer: _Session) -> None:
        self.outer = outer


class _Handle:
    """An opaque session handle (useless without the vault, which checks the caller)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<cave security session>"


class _Refused(Exception):
    """Raised inside the vault for a refused command; becomes a PermissionError."""

