"""Provider API keys, kept out of ``os.environ`` where agent code would read them for free.

Agent code runs in the kernel's process, so ``os.environ["ANTHROPIC_API_KEY"]`` costs it nothing and
raises no audit event. ``take_provider_keys_from_environ()`` (called once at kernel start) moves the
known provider keys from ``os.environ`` into a dictionary private to this module; model clients ask
``get_key(provider)``.

What this does:
  * ``os.environ`` no longer holds the keys, and neither does the C-level environment
    (``del os.environ[k]`` calls ``unsetenv``), so ``os.getenv``, ``os.environ.copy()`` and child
    processes started *afterwards* (``subprocess``, ``os.system``, Deno tools) do not see them.

What this does not do:
  * ``/proc/self/environ`` still shows the environment the process *started* with, keys included;
    the guard (``cave.security``) blocks reading it like any file outside the workspace.
  * It is not a vault. Code in this process can import this module and call ``get_key``, read the
    SDK client's ``api_key`` attribute, walk ``gc.get_objects()`` or read process memory. The guard
    and the review of agent code are what stand between agent code and those; this module only
    removes the zero-effort path.
  * Processes started before the move keep their copy of the environment.
  * Cloud credentials used by storage (``AWS_SECRET_ACCESS_KEY`` and friends) are left in place,
    because fsspec/s3fs read them from the environment.
"""

from __future__ import annotations

import os
import threading

from .._errors import ConfigError

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

_keys: dict[str, str] = {}
_lock = threading.Lock()


def take_provider_keys_from_environ() -> list[str]:
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


def set_key(provider: str, key: str) -> None:
    """Store a key typed by the user (``%cave key``) without putting it in the environment."""
    if not key or key != key.strip():
        raise ConfigError(
            f"The {provider} key must be non-empty, without surrounding spaces or newlines. "
            "Paste it again (`%cave key`)."
        )
    with _lock:
        _keys[provider] = key


def forget_key(provider: str) -> None:
    """Drop the stored key for ``provider`` (no error if there is none)."""
    with _lock:
        _keys.pop(provider, None)
