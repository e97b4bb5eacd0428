"""``cave checkpoints list | show NAME | diff A B | rm NAME | verify [NAME] | gc``: from a terminal.

The store is ``--store URL`` (a directory or an fsspec URL), else ``$CAVE_CHECKPOINTS``, else
``<session dir>/checkpoints`` with the session dir from ``--session-dir``, ``$CAVE_SESSION_DIR`` or
``./.cave`` (what a kernel started here uses). The signing key is the user's
(``$CAVE_CONFIG_DIR/checkpoint_secret``): copy it along with a session you move to another
machine or user, or its checkpoints are refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .._errors import CaveError, ConfigError
from ._protocol import CheckpointInfo
from ._store import SessionStore

__all__ = ["add_parser", "default_store_url", "format_list", "main"]

from .._env import SESSION_DIR_ENV, STORE_ENV
from .._env import session_dir as resolve_session_dir


def default_store_url(session_dir: str | os.PathLike[str] | None = None) -> str:
    if os.environ.get(STORE_ENV) and session_dir is None:
        return os.environ[STORE_ENV]
    return str(resolve_session_dir(session_dir) / "checkpoints")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _changes(info: CheckpointInfo) -> str:
    ch = info.changes
    bits = [f"+{len(ch.added)}"] if ch.added else []
    bits += [f"~{len(ch.changed)}"] if ch.changed else []
    bits += [f"-{len(ch.removed)}"] if ch.removed else []
    if info.state_changed:
        bits.append("state")
    return " ".join(bits) or "nothing"


def format_list(infos: Sequence[CheckpointInfo]) -> str:
    """The table `%checkpoint list` and `cave checkpoints list` print."""
    if not infos:
        return "No checkpoints yet."
    rows = [("name", "saved (UTC)", "size", "objects", "changed since previous", "unpicklable")]
    for i in infos:
        rows.append(
            (
                i.name,
                i.created.strftime("%Y-%m-%d %H:%M:%S"),
                _size(i.size),
                str(i.objects),
                _changes(i),
                ", ".join(p.name for p in i.unpicklable) or "-",
            )
        )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _show(info: CheckpointInfo, out: TextIO) -> None:
    print(f"{info.name}  (#{info.seq}, saved {info.created:%Y-%m-%d %H:%M:%S} UTC)", file=out)
    print(
        f"  size {_size(info.size)}, {info.objects} objects, parent {info.parent or '-'}", file=out
    )
    for label, names in (
        ("added", info.changes.added),
        ("changed", info.changes.changed),
        ("removed", info.changes.removed),
    ):
        if names:
            print(f"  {label}: {', '.join(names)}", file=out)
    print(f"  session state {'changed' if info.state_changed else 'unchanged'}", file=out)
    for p in info.unpicklable:
        print(f"  not saved: {p.name} ({p.type}): {p.reason}", file=out)


def _run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    url = args.store or default_store_url(args.session_dir)
    local = "://" not in url or url.startswith("file://")
    if local and not Path(url.removeprefix("file://")).exists():
        raise ConfigError(
            f"No checkpoint store at {url}. Pass --store DIR_OR_URL, or --session-dir DIR (a "
            f"kernel's <cwd>/.cave), or set {STORE_ENV}."
        )
    store = SessionStore(url)
    cmd = args.checkpoints_command
    if cmd == "list":
        print(format_list(store.list()), file=out)
    elif cmd == "show":
        _show(store.info(args.name), out)
    elif cmd == "diff":
        d = store.diff(args.a, args.b)
        for label, names in (
            ("added", d.changes.added),
            ("changed", d.changes.changed),
            ("removed", d.changes.removed),
            ("unchanged", d.unchanged),
            ("state keys changed", d.state_keys_changed),
        ):
            print(f"{label}: {', '.join(names) or '-'}", file=out)
    elif cmd == "rm":
        for name in args.names:
            store.remove(name)
            print(f"removed {name} (its blobs go at the next `cave checkpoints gc`)", file=out)
    elif cmd == "verify":
        report = store.verify(args.name)
        for name in report.checked:
            print(f"ok      {name}", file=out)
        for name, problem in report.failed:
            print(f"FAILED  {name}: {problem}", file=out)
        print(
            f"{report.blobs_checked} blobs re-hashed, {report.orphan_blobs} unreferenced "
            "(`cave checkpoints gc` removes them)",
            file=out,
        )
        return 0 if report.ok else 1
    elif cmd == "gc":
        r = store.gc()
        print(
            f"removed {r.removed_blobs} blobs ({_size(r.removed_bytes)}) and {r.removed_temp} "
            f"partial files; kept {r.kept_blobs}",
            file=out,
        )
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``checkpoints`` to the ``cave`` command's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "checkpoints", help="list, inspect, verify and clean up session checkpoints"
    )
    p.add_argument(
        "--store", help=f"directory or fsspec URL (default ${STORE_ENV} or <session>/checkpoints)"
    )
    p.add_argument(
        "--session-dir", help=f"session directory (default ${SESSION_DIR_ENV} or ./.cave)"
    )
    cmds = p.add_subparsers(dest="checkpoints_command", required=True)
    cmds.add_parser("list", help="name, time, size, objects, what changed, what was not saved")
    cmds.add_parser("show", help="details of one checkpoint").add_argument("name")
    d = cmds.add_parser("diff", help="names added, changed and removed from A to B")
    d.add_argument("a")
    d.add_argument("b")
    cmds.add_parser("rm", help="remove checkpoints").add_argument("names", nargs="+")
    cmds.add_parser("verify", help="check signatures and re-hash every blob").add_argument(
        "name", nargs="?"
    )
    cmds.add_parser("gc", help="delete blobs no checkpoint references")
    p.set_defaults(func=_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cave checkpoints ...`` on its own (the lead wires `add_parser` into `cave`)."""
    parser = argparse.ArgumentParser(prog="cave")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["checkpoints", *(argv if argv is not None else sys.argv[1:])])
    try:
        return int(args.func(args))
    except CaveError as err:
        print(f"cave: {err}", file=sys.stderr)
        return 2
