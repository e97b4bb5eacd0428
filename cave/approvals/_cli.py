"""``cave approvals list | approve ID | deny ID | answer ID TEXT``: decide from a terminal.

``answer`` answers a question the agent asked with ``human.ask``; ``deny`` declines one. ``TEXT``
is the rest of the command line (quote it to keep spaces exactly), or ``-`` to read it from
standard input (for long or multi-line answers, up to ``MAX_ANSWER_CHARS``).

The terminal shares only the session directory with the kernel: it writes the decision into the
same SQLite database, and the waiting kernel sees it on its next poll (every 50 ms). So it works for
a kernel running anywhere that mounts the directory *and* supports SQLite locking on it (a local
disk; not NFS). The command does not talk to the kernel, so it needs no connection file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .._errors import CaveError, ConfigError
from ._queue import DB_NAME, ApprovalQueue, ApprovalRecord
from ._render import format_table

__all__ = ["add_parser", "answer", "decide", "default_session_dir", "list_requests", "main"]

from .._env import SESSION_DIR_ENV, session_dir


class NoApprovalStore(ConfigError):
    """The session directory has no approvals database."""

    def __init__(self, session_dir: Path) -> None:
        self.session_dir = session_dir
        super().__init__(
            f"No approvals database in {session_dir} ({DB_NAME} is missing). Run the command in "
            f"the notebook's directory, or pass --session-dir DIR (or set {SESSION_DIR_ENV}) to "
            "the kernel's session directory (default <workspace>/.cave)."
        )


def default_session_dir() -> Path:
    """``$CAVE_SESSION_DIR``, else ``./.cave`` (what a kernel started here uses)."""
    return session_dir()


def _open(session_dir: str | os.PathLike[str] | None) -> ApprovalQueue:
    path = Path(session_dir) if session_dir is not None else default_session_dir()
    if not (path / DB_NAME).exists():
        raise NoApprovalStore(path)
    queue = ApprovalQueue.in_directory(path)
    queue.expire_orphans()  # a dead kernel's requests must not look decidable
    queue.expire_overdue()
    return queue


def list_requests(
    session_dir: str | os.PathLike[str] | None = None, *, limit: int = 20
) -> list[ApprovalRecord]:
    """Pending requests plus the last ``limit`` decided ones, oldest first."""
    with _open(session_dir) as queue:
        return queue.listing(limit)


def decide(
    session_dir: str | os.PathLike[str] | None,
    request_id: str,
    decision: str,
    who: str | None = None,
) -> ApprovalRecord:
    """Decide ``request_id`` (or a unique prefix): ``approve_once``, ``approve_session``, ``deny``.

    Raises ``UnknownRequest`` or ``AlreadyDecided`` (both ``ApprovalError``).
    """
    from ._channel import _local_user

    if decision not in ("approve_once", "approve_session", "deny"):
        raise ConfigError(
            f"Unknown decision {decision!r}: use approve_once, approve_session or deny."
        )
    with _open(session_dir) as queue:
        return queue.decide(request_id, decision, who=who or _local_user(), channel="cli")


def answer(
    session_dir: str | os.PathLike[str] | None,
    request_id: str,
    text: str,
    who: str | None = None,
) -> ApprovalRecord:
    """Answer the question ``request_id`` (or a unique prefix) with ``text``.

    Raises ``UnknownRequest``, ``AlreadyDecided``, or ``ApprovalError`` for an empty or too long
    answer, or a request that is not a question.
    """
    from ._channel import _local_user

    with _open(session_dir) as queue:
        return queue.decide(
            request_id, "answer", who=who or _local_user(), channel="cli", answer=text
        )


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``approvals`` to the ``cave`` command's subparsers; the handler is :func:`run`."""
    p = subparsers.add_parser("approvals", help="list or decide the agent's approval requests")
    p.add_argument(
        "--session-dir", help=f"the session directory (default ${SESSION_DIR_ENV} or ./.cave)"
    )
    sub = p.add_subparsers(dest="approvals_command")
    lst = sub.add_parser("list", help="pending and recent requests")
    lst.add_argument("-n", type=int, default=20, help="how many decided requests to show")
    ok = sub.add_parser("approve", help="approve a pending request")
    ok.add_argument("id")
    ok.add_argument("--session", action="store_true", help="approve for the rest of the session")
    ok.add_argument("--who", help="name recorded as the decider (default: your login)")
    no = sub.add_parser("deny", help="deny a pending request (declines a question)")
    no.add_argument("id")
    no.add_argument("--who")
    say = sub.add_parser("answer", help="answer a question the agent asked (human.ask)")
    say.add_argument("id")
    say.add_argument(
        "text", nargs="+", help="the answer (words are joined by spaces); - reads stdin"
    )
    say.add_argument("--who")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handle parsed ``cave approvals ...`` arguments; raises ``CaveError`` on failure."""
    command = args.approvals_command or "list"
    if command == "list":
        print(format_table(list_requests(args.session_dir, limit=getattr(args, "n", 20))))
        return 0
    if command == "answer":
        text = sys.stdin.read() if args.text == ["-"] else " ".join(args.text)
        record = answer(args.session_dir, args.id, text, args.who)
        print(f"{record.id}: {record.outcome_text()}")
        return 0
    decision = "deny" if command == "deny" else (
        "approve_session" if args.session else "approve_once"
    )
    record = decide(args.session_dir, args.id, decision, args.who)
    print(f"{record.id}: {record.outcome_text()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: ``python -m cave.approvals._cli list`` (same as ``cave approvals``)."""
    parser = argparse.ArgumentParser(prog="cave approvals")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["approvals", *(argv if argv is not None else sys.argv[1:])])
    try:
        return run(args)
    except CaveError as err:
        print(f"cave: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
