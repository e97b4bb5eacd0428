"""Provider API keys, kept where agent code cannot read them.

In a kernel, ``start_credential_process()`` (called once at kernel start) takes the known provider
keys out of ``os.environ`` and out of the process's initial environment block (what
``/proc/self/environ`` shows: overwritten in place), and hands the ones Cave uses (Anthropic,
OpenAI) to a separate **credential-holding process** (``_credential_proxy``), each bound to the
endpoint it is meant for. The kernel keeps only a per-kernel token and a route: model clients send
their requests through that process, which puts the key in. ``get_key`` then returns None for
those providers, ``%cave key`` (``set_key``) hands a typed key to the process too.

What this protects: the key is not in the kernel's memory, environment or ``/proc/self/environ``
once start-up is done, so agent code (even code that defeats the in-process guard) cannot read
it; the credential process is undumpable, so ``/proc/<pid>/mem`` and ``ptrace`` cannot either.
A key is bound to its endpoint when handed over, so nobody who lacks it can send it elsewhere.

What it does not: code in the kernel can *use* the proxy (the token is in the kernel's memory):
agent code that defeats the guard can make model calls on the user's key. Freed memory is not
wiped, so a raw memory scan (ctypes) might still find a key's bytes from before the hand-over.
Processes started before the kernel (the Jupyter server that launched it) keep their copy.
Without a kernel (``cave`` used as a library), or if the process cannot start, keys are kept in
this module as before (``set_key``/``get_key``), readable by any code in the process.
Cloud credentials used by storage (``AWS_SECRET_ACCESS_KEY`` and friends) stay in the
environment, because fsspec/s3fs read them there; the guard makes agent reads of them ask.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from .._errors import ConfigError

if TYPE_CHECKING:
    from ._credential_proxy import CredentialProxy, Route

_log = logging.getLogger(__name__)

PROVIDER_ENV_VARS: dict[str, str] = {
    "ANTHROPIC_API_KEY": "anthropic",
    "ANTHROPIC_AUTH_TOKEN": "anthropic_auth_token",
    "OPENAI_API_KEY": "openai",
    "GEMINI_API_KEY": "gemini",
    "GOOGLE_API_KEY": "google",
    "MISTRAL_API_KEY": "mistral",
    "GROQ_API_KEY": "groq",
    "OPENROUTER_API_KEY": "openrouter",
    "TOGETHER_API_KEY": "together",
    "DEEPSEEK_API_KEY": "deepseek",
    "XAI_API_KEY": "xai",
    "COHERE_API_KEY": "cohere",
    "FIREWORKS_API_KEY": "fireworks",
    "HF_TOKEN": "huggingface",
}
"""Environment variable -> provider name under which ``get_key`` returns it."""

UPSTREAMS: dict[str, tuple[str, str, str]] = {
    "anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com", "x-api-key"),
    "anthropic_auth_token": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com", "authorization"),
    "openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1", "authorization"),
}
"""Providers whose keys the credential process holds: base-URL variable, default, header."""

_keys: dict[str, str] = {}
_lock = threading.Lock()
_proxy: list[CredentialProxy] = []
_wanted: list[bool] = []
"""Non-empty once the kernel asked for keys to live in a credential process."""


def default_upstream(provider: str) -> str:
    """Where ``provider``'s requests go when no base URL is given (its variable, else the API)."""
    var, default, _header = UPSTREAMS[provider]
    return (os.environ.get(var) or default).rstrip("/")


def start_credential_process() -> list[str]:
    """Kernel start: move provider keys out of the environment (``os.environ`` and the initial
    block) into a credential-holding process; return the variable names moved.

    The values are taken as the environment's own ``bytes`` (never decoded to ``str``), sent,
    and then overwritten in place, so no copy is left in freed memory either. If the process
    cannot start, the keys stay in this module (logged), as without a kernel.
    """
    found: dict[str, bytes] = {}
    with _lock:
        data = getattr(os.environ, "_data", None)  # before the guard takes it (kernel start)
        for var in PROVIDER_ENV_VARS:
            raw = data.get(var.encode()) if isinstance(data, dict) else None
            if raw is not None and isinstance(data, dict):
                found[var] = raw
                os.unsetenv(var)
                data.pop(var.encode(), None)
            elif var in os.environ:  # the guard is on already: a plain move
                found[var] = os.environ.pop(var).encode()
    scrub_initial_environ(set(PROVIDER_ENV_VARS))
    _wanted.append(True)
    for var, raw in found.items():
        provider = PROVIDER_ENV_VARS[var]
        proxy = _ensure_proxy() if raw and provider in UPSTREAMS else None
        if proxy is not None:
            proxy.add_key(provider, default_upstream(provider), raw, header=UPSTREAMS[provider][2])
        elif raw and provider in UPSTREAMS:
            with _lock:
                _keys[provider] = raw.decode()
        wipe(raw)
    moved = sorted(found)
    found.clear()
    return moved


def wipe(raw: bytes | bytearray) -> None:
    """Overwrite a secret's bytes in place before they are freed (CPython ``bytes`` layout).

    Only for buffers nothing else shares: the environment's own values, lines built to send.
    """
    if isinstance(raw, bytearray):
        raw[:] = bytes(len(raw))
    elif type(raw) is bytes and len(raw) > 1:  # b"" and 1-byte bytes are shared singletons
        import ctypes
        import sys

        ctypes.memset(id(raw) + sys.getsizeof(b"") - 1, 0, len(raw))


def route(provider: str, base_url: str | None = None) -> Route | None:
    """How to reach ``provider``'s key held by the credential process at ``base_url`` (default:
    ``default_upstream``), or None when that process holds no key for that endpoint."""
    if not _proxy or provider not in UPSTREAMS:
        return None
    return _proxy[0].route(provider, (base_url or default_upstream(provider)).rstrip("/"))


def credential_process_pid() -> int | None:
    """The credential process's pid (None when keys are held in-process)."""
    return _proxy[0].pid if _proxy and _proxy[0].alive() else None


def _ensure_proxy() -> CredentialProxy | None:
    """The running credential process, started now if the kernel asked for one and it is not
    running yet (no process is started for a kernel without keys). None without a kernel, or if
    it cannot start (logged; keys then stay in this module)."""
    if _proxy and _proxy[0].alive():
        return _proxy[0]
    if not _wanted:
        return None
    try:
        from ._credential_proxy import CredentialProxy

        proxy = CredentialProxy()
    except Exception as exc:  # keep the kernel usable: keys stay in-process
        _log.warning("Cave's credential process did not start (%s); keys stay in memory", exc)
        return None
    _proxy[:] = [proxy]
    return proxy


def _store(provider: str, key: str, base_url: str | None) -> None:
    proxy = _ensure_proxy() if provider in UPSTREAMS else None
    if proxy is not None:
        upstream = (base_url or default_upstream(provider)).rstrip("/")
        proxy.add_key(provider, upstream, key, header=UPSTREAMS[provider][2])
        with _lock:
            _keys.pop(provider, None)
        return
    with _lock:
        _keys[provider] = key


def scrub_initial_environ(names: set[str]) -> int:
    """Overwrite the values of ``names`` in the initial environment block with NUL bytes.

    That block (``/proc/self/environ``) is memory on the main thread's stack, set up by
    ``execve``; ``unsetenv`` does not touch it. Linux only; returns how many were wiped (0
    elsewhere, or when ``/proc`` cannot be read).
    """
    wanted = {n.encode() for n in names}
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50, 51)
        with open("/proc/self/environ", "rb") as f:
            block = f.read()
    except (OSError, ValueError, IndexError):
        return 0
    if not start or len(block) != end - start:
        return 0
    import ctypes

    wiped, offset = 0, 0
    for entry in block.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if eq and name in wanted and value:
            ctypes.memset(start + offset + len(name) + 1, 0, len(value))
            wiped += 1
        offset += len(entry) + 1
    del block
    return wiped


def take_provider_keys_from_environ() -> list[str]:  # without a kernel; see the module doc
    """Move the provider keys present in the environment into this module; return their names.

    A key taken now replaces one stored earlier for the same provider. Empty values are removed
    from the environment but not stored.
    """
    moved: list[str] = []
    with _lock:
        for var, provider in PROVIDER_ENV_VARS.items():
            value = os.environ.pop(var, None)  # pop -> __delitem__ -> os.unsetenv
            if value is None:
                continue
            moved.append(var)
            if value:
                _keys[provider] = value
    return moved


def get_key(provider: str) -> str | None:
    """The stored key for ``provider`` (``"anthropic"``, ``"openai"``, ...), or None."""
    with _lock:
        return _keys.get(provider)


def set_key(provider: str, key: str, *, base_url: str | None = None) -> None:
    """Keep a key typed by the user (``%cave key``) out of the environment: in the credential
    process, bound to ``base_url`` (default ``default_upstream``), when one runs."""
    if not key or key != key.strip():
        raise ConfigError(
            f"The {provider} key must be non-empty, without surrounding spaces or newlines. "
            "Paste it again (`%cave key`)."
        )
    _store(provider, key, base_url)


def forget_key(provider: str) -> None:
    """Drop the stored key for ``provider`` (no error if there is none)."""
    with _lock:
        _keys.pop(provider, None)
