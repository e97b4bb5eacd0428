"""``os.environ`` while agent code runs: every read of a variable is the capability ``env:NAME``.

How it works, and why:

* **The object stays, its class and its data move.** ``os.environ`` and ``os.environb`` keep
  their identity (modules that did ``from os import environ`` hold the same object) but their
  class becomes ``GuardedEnviron``, and the dictionary behind them (``_data``, which is also
  ``posix.environ``) is taken out of every place Python code can reach and handed to the guard's
  vault (``EnvironVault``). ``posix.environ`` becomes ``os.environb``. ``GuardedEnviron`` holds no
  data: on an agent thread each operation is one ``sys.audit("cave.env", ...)`` event that only
  the guard's hook receives, so replacing its methods (or writing the class dictionary) gains
  agent code nothing by itself (it can make a *user* thread copy the data out later: the
  general monkeypatching bypass of ``docs/security.md``).
* **Threads that are not agent code** (user cells, the kernel, Cave) get the real environment.
  The first read in such a thread asks the vault, which puts the dictionary in that thread's
  slot of a ``threading.local``; later reads use it directly (one more dictionary lookup than
  stock CPython: ``benchmarks/bench_environ.py``). The vault empties the slot when the thread
  enters ``agent_code()``, and threads started by agent code never get one, so an agent thread
  always goes through the vault.
* **Agent threads**: a name the policy allows (``DEFAULT_ENV_ALLOW``: ``PATH``, ``HOME``,
  ``LANG``, ``LC_*``, ``PYTHON*``, ...), a name a session grant covers, or a name the agent set
  itself is read freely (counted in the step's ``guard.summary`` record); any other *set* name is
  decided by the ``env.get`` primitive, the one decision point for ``env:NAME`` (policy, grants,
  approval, audit record). A name that is not set reads as "not set" without asking: there is no
  secret to protect, and libraries probe many (``NUMPY_*``, ``PANDAS_*``) at import.
  Iterating (``keys()``, ``items()``, ``dict(os.environ)``, ``copy()``, ``repr``, ``len``) shows
  only the freely readable names and never asks. Writes and deletes are ``env:NAME`` too, and
  the default rules (source ``HARMLESS_ENV``) do not cover them: changing ``PATH`` asks.
* **Children**: ``subprocess`` and ``multiprocessing`` children started by agent code without an
  ``env=`` get only the freely readable names (the guard's ``fork_exec`` forwarder fills it in);
  ``os.posix_spawn(..., os.environ)`` reads the guarded mapping; ``os.system`` is replaced by a
  forwarder that runs ``/bin/sh -c`` with the same filtered environment; ``os.exec*`` without an
  environment (``execv``, ``execl``, ``execvp``) is refused, because the new program would
  inherit the kernel's whole environment.

What this does not stop: the C-level environment (``getenv(3)``) through ctypes function
pointers that already exist, raw memory reads (``ctypes.memmove``), and ``/proc/self/environ``,
which is the process's *initial* environment and is guarded like any file outside the workspace
(asks). Work handed to a thread that is not agent code reads the real environment, like every
other guard bypass in ``docs/security.md``.
"""

from __future__ import annotations

import os
import posix
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "DEFAULT_ENV_ALLOW",
    "ENV_EVENT",
    "EnvironVault",
    "GuardedEnviron",
    "install_environ",
]

ENV_EVENT = "cave.env"
"""The audit event ``GuardedEnviron`` uses to reach the vault."""

DEFAULT_ENV_ALLOW = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "HOSTNAME", "SHLVL",
    "LANG", "LANGUAGE", "LC_*", "TZ", "TERM", "COLORTERM", "TERM_PROGRAM", "COLUMNS", "LINES",
    "TMPDIR", "TMP", "TEMP", "PYTHON*", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV",
    "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
    "MPLBACKEND", "MPLCONFIGDIR", "JPY_PARENT_PID", "JPY_SESSION_NAME",
    "CLICOLOR", "CLICOLOR_FORCE", "FORCE_COLOR", "NO_COLOR", "PAGER", "GIT_PAGER",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_MAX_THREADS",
    "NUMEXPR_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
)  # fmt: skip
"""Names (``*`` globs) agent code may read without asking; each is an ``allow env:...`` rule
of the default policy, which ``cave.toml`` or ``%cave policy ask env:NAME`` can override."""


def _env(op: str, a: Any = None, b: Any = None, _audit: Any = sys.audit) -> Any:
    box: list[Any] = []
    _audit(ENV_EVENT, op, a, b, box)
    if not box:
        raise RuntimeError(
            "Cave's guard did not answer for os.environ; sys.audit may have been replaced. "
            "Restart the kernel."
        )
    return box[0]


_cache = threading.local()
"""Per thread: the real dictionary, once the vault has seen that this thread is not agent code.
The vault clears it when a thread starts running agent code (``forget_thread``); threads that
agent code starts never have it. An agent thread reading it sees only its own (empty) slot."""


def _fast() -> dict[bytes, bytes] | None:
    return _cache.__dict__.get("d")


class GuardedEnviron(os._Environ):
    """The class of ``os.environ``/``os.environb`` once the guard is on. Holds no data."""

    @property
    def _data(self) -> dict[bytes, bytes]:
        return _fast() or _env("data")

    def __getitem__(self, key: Any) -> Any:
        data = _fast()
        value = _env("get", self.encodekey(key)) if data is None else data.get(self.encodekey(key))
        if value is None:
            raise KeyError(key) from None
        return self.decodevalue(value)

    def __setitem__(self, key: Any, value: Any) -> None:
        _env("set", self.encodekey(key), self.encodevalue(value))

    def __delitem__(self, key: Any) -> None:
        if not _env("del", self.encodekey(key)):
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[Any]:
        data = _fast()
        for key in _env("names") if data is None else list(data):
            yield self.decodekey(key)

    def __len__(self) -> int:
        data = _fast()
        return len(_env("names") if data is None else data)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{self.decodekey(k)!r}: {self.decodevalue(v)!r}" for k, v in self._pairs()
        )
        return f"environ({{{shown}}})"

    def copy(self) -> dict[Any, Any]:
        return {self.decodekey(k): self.decodevalue(v) for k, v in self._pairs()}

    def _pairs(self) -> list[tuple[bytes, bytes]]:
        data = _fast()
        return _env("items") if data is None else list(data.items())


class EnvironVault:
    """The real environment dictionary, held by the guard's vault only.

    ``agent`` callbacks are the vault's: ``visible(name)`` says whether an agent thread may read
    ``name`` freely, ``decide(name)`` runs the ``env.get`` decision (or raises), ``allow_set``
    checks a write and returns a context that lets its own ``putenv`` event through.
    """

    __slots__ = ("cache", "data", "putenv", "unsetenv")

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data
        self.putenv = posix.putenv
        self.unsetenv = posix.unsetenv
        self.cache = _cache

    def remember_thread(self) -> None:
        """This thread is not agent code: let ``GuardedEnviron`` read the dictionary directly."""
        self.cache.d = self.data

    def forget_thread(self) -> None:
        """This thread is about to run agent code: no direct reads from now on."""
        self.cache.__dict__.clear()

    # -- threads that are not agent code ------------------------------------------------
    def plain(self, op: str, a: Any, b: Any) -> Any:
        data = self.data
        if op == "get":
            return data.get(_key(a))
        if op == "names":
            return list(data)
        if op == "items":
            return list(data.items())
        if op == "data":
            return data
        if op == "set":
            key, value = _key(a), _value(b)
            self.putenv(key, value)
            data[key] = value
            return True
        if op == "del":
            key = _key(a)
            self.unsetenv(key)
            return data.pop(key, None) is not None
        raise ValueError(f"unknown environ op {op!r}")

    # -- agent threads ------------------------------------------------------------------
    def agent(
        self,
        op: str,
        a: Any,
        b: Any,
        *,
        visible: Callable[[str], bool],
        decide: Callable[[str], None],
        write: Callable[[str, bool, Callable[[], None]], None],
        count: Callable[[], None],
    ) -> Any:
        data = self.data
        if op == "get":
            key = _key(a)
            value = data.get(key)
            if value is None or visible(os.fsdecode(key)):
                count()
                return value
            decide(os.fsdecode(key))
            return data.get(key)
        if op in ("names", "items"):
            count()
            pairs = [(k, v) for k, v in list(data.items()) if visible(os.fsdecode(k))]
            return [k for k, _ in pairs] if op == "names" else pairs
        if op == "set":
            key, value = _key(a), _value(b)

            def do_set() -> None:
                self.putenv(key, value)
                data[key] = value

            write(os.fsdecode(key), True, do_set)
            return True
        if op == "del":
            key = _key(a)
            present = key in data

            def do_del() -> None:
                self.unsetenv(key)
                data.pop(key, None)

            write(os.fsdecode(key), False, do_del)
            return present
        if op == "data":
            raise PermissionError(
                "Cave guard: agent code may not read os.environ's raw dictionary; use "
                "os.environ[NAME] or env.get(NAME), which the policy decides"
            )
        raise ValueError(f"unknown environ op {op!r}")

    def child_env(self, visible: Callable[[str], bool]) -> list[bytes]:
        """``NAME=value`` entries for a child started by agent code without ``env=``."""
        return [k + b"=" + v for k, v in list(self.data.items()) if visible(os.fsdecode(k))]


def _key(value: Any) -> bytes:
    if type(value) is not bytes:
        raise TypeError(f"environment keys reach the guard encoded, not as {type(value).__name__}")
    return value


def _value(value: Any) -> bytes:
    if type(value) is not bytes:
        raise TypeError(
            f"environment values reach the guard encoded, not as {type(value).__name__}"
        )
    return value


def install_environ() -> dict[bytes, bytes]:
    """Swap the classes of ``os.environ``/``os.environb``, take their dictionary out of reach and
    return it (for the vault). Call once, from ``_guard.install``."""
    data: dict[bytes, bytes] = os.environ._data  # type: ignore[attr-defined]
    for mapping in (os.environ, getattr(os, "environb", None)):
        if mapping is None:
            continue
        mapping.__class__ = GuardedEnviron
        mapping.__dict__.pop("_data", None)
    if getattr(os, "environb", None) is not None:
        posix.environ = os.environb  # type: ignore[assignment]
    return data
