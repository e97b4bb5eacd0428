"""``%checkpoint``: save, list, restore and compare checkpoints of the session from a cell.

Parsing and printing only; the work is `cave.checkpoint._session_io` (save/restore a session) and
`SessionStore` (list, diff). The store is the session's: ``c.CaveKernel.checkpoints``,
``$CAVE_CHECKPOINTS`` or ``<session dir>/checkpoints``.
"""

from __future__ import annotations

import shlex
import sys
import time
from typing import Any, TextIO

from .._errors import ConfigError
from .._session import current_session

USAGE = """\
%checkpoint save [NAME]     checkpoint the session now (default name cp-<UTC time>)
%checkpoint list            name, time, size, objects, what changed since the previous one
%checkpoint restore NAME    put the session back as it was at NAME (refused while a turn runs)
%checkpoint diff A B        names added, changed and removed from A to B
%checkpoint auto [on|off]   auto-checkpoint after each agent turn (shows the current setting)
%checkpoint copy NAME [on|off]  copy the data of DuckDB connection NAME into checkpoints (on), or
                            save it by path, the default (off); no argument shows the setting
From a terminal: cave checkpoints list|show|diff|rm|verify|gc, cave resume NAME"""


def _out() -> TextIO:
    """The cell's stdout, even while agent code runs in another thread.

    The agent executor swaps ``sys.stdout`` process-wide for a tee into the model's view while a
    step runs; a ``%checkpoint`` run from a kernel subshell at that moment must not print into
    the agent's output (the model would read it), so it writes to the stream the tee wraps. The
    tee has no ``set_parent``, so ipykernel could not tell that stream which cell this is: we do.
    """
    from ..runtime._capture import TeeStream

    stream: TextIO = sys.stdout
    original = getattr(stream, "_original", None)
    if not isinstance(stream, TeeStream) or original is None:
        return stream
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None and hasattr(original, "set_thread_parent"):
        original.set_thread_parent(shell.parent_header)
    return original


def _print(text: str) -> None:
    print(text, file=_out())


def checkpoint_magic(line: str) -> None:
    """``%checkpoint save|list|restore|diff|auto``; ``%checkpoint help`` for the usage."""
    from ..checkpoint._session_store import open_store

    args = shlex.split(line)
    command, rest = (args[0], args[1:]) if args else ("list", [])
    session = current_session()
    if command in ("help", "-h", "--help"):
        _print(USAGE)
    elif command == "save" and len(rest) <= 1:
        _save(session, rest[0] if rest else None)
    elif command == "list" and not rest:
        from ..checkpoint._cli import format_list

        store = open_store(session)
        _print(f"store: {store.url}")
        _print(format_list(store.list()))
    elif command == "restore" and len(rest) == 1:
        from ..checkpoint._session_io import restore

        _print(restore(session, rest[0]).summary())
    elif command == "diff" and len(rest) == 2:
        _print(_diff_text(open_store(session).diff(rest[0], rest[1])))
    elif command == "auto" and len(rest) <= 1:
        _auto(session, rest[0] if rest else None)
    elif command == "copy" and 1 <= len(rest) <= 2:
        _copy(session, rest[0], rest[1] if len(rest) > 1 else None)
    else:
        raise ConfigError(f"Cannot understand `%checkpoint {line.strip()}`.\n{USAGE}")


def _save(session: Any, name: str | None) -> None:
    from ..checkpoint._session_io import save
    from ..checkpoint._session_store import fresh_name, open_store

    store = open_store(session)
    t0 = time.perf_counter()
    info = save(session, name or fresh_name(store), store=store)
    took = time.perf_counter() - t0
    _print(
        f"Saved checkpoint {info.name!r}: {info.objects} objects, {_size(info.size)} "
        f"({_size(info.written)} new in {info.blobs_written} blobs) in {took:.2f} s."
    )
    for p in info.unpicklable:
        _print(f"  not saved: {p.name} ({p.type}): {p.reason}")


def _auto(session: Any, setting: str | None) -> None:
    from ..checkpoint._autocheckpoint import autocheckpoint_of, enable_autocheckpoint

    auto = autocheckpoint_of(session)
    if setting is not None:
        if setting not in ("on", "off"):
            raise ConfigError(f"%checkpoint auto takes on or off, not {setting!r}.")
        if setting == "on":
            auto = enable_autocheckpoint(session, keep=auto.keep if auto else 20)
        elif auto is not None:
            auto.enabled = False
    if auto is None or not auto.enabled:
        _print("auto-checkpoint: off")
        return
    last = f"; last: {auto.last.name}" if auto.last else ""
    error = f"; last attempt failed: {auto.last_error}" if auto.last_error else ""
    _print(f"auto-checkpoint: on, keeping the newest {auto.keep}{last}{error}")


def _copy(session: Any, name: str, setting: str | None) -> None:
    from ..checkpoint._duckdb import copy_database, copy_setting

    if setting not in (None, "on", "off"):
        raise ConfigError(f"%checkpoint copy NAME takes on or off, not {setting!r}.")
    if name not in session.runtime.namespace:
        raise ConfigError(
            f"No {name!r} in the agent's namespace; inject it first (cave.inject({name!r}, con))."
        )
    con = session.runtime.namespace[name]
    try:
        if setting is not None:
            copy_database(con, setting == "on")
        _print(f"{name}: {copy_setting(con)}")
    except TypeError as exc:
        raise ConfigError(f"%checkpoint copy {name}: {exc}") from None


def _diff_text(d: Any) -> str:
    rows = [
        ("added", d.changes.added),
        ("changed", d.changes.changed),
        ("removed", d.changes.removed),
        ("unchanged", d.unchanged),
        ("state changed", d.state_keys_changed),
    ]
    return f"{d.a} -> {d.b}\n" + "\n".join(f"  {k}: {', '.join(v) or '-'}" for k, v in rows)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


def register(shell: Any) -> None:
    """Add ``%checkpoint`` to ``shell``."""
    shell.register_magic_function(checkpoint_magic, "line", "checkpoint")
