"""The policy: which uses of the world are allowed, asked about, or denied.

A policy is a frozen list of rules ``capability-pattern -> allow | ask | deny`` plus a fallback
for requests that no rule matches. The decision for one capability:

1. any matching ``deny`` rule: **deny** (deny wins, whatever else matches);
2. otherwise the **most specific** matching rule decides (see ``_capabilities`` for what
   "specific" means); on a tie ``ask`` beats ``allow``;
3. no rule matches: the fallback (``ask``).

Grants from approvals are not part of the policy (see ``_grants``); they are consulted after the
deny rules and before the rest.

An ``ask`` rule may carry a timeout: ``ask fs.write:/data/** timeout=300 on_timeout=deny``. When
nobody decides within ``timeout`` seconds the request expires and ``on_timeout`` decides: ``deny``
(the default), or ``allow`` only when written out, which turns the question into a veto window
(silence is consent). The timeout is part of the rule that decided, so the most specific rule's
timeout applies; ``allow`` and ``deny`` rules cannot have one.
"""

from __future__ import annotations

import enum
import math
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ._capabilities import Capability, Pattern, compile_pattern, expand_kinds, parse_capability
from ._environ import DEFAULT_ENV_ALLOW

__all__ = [
    "DEFAULT_SECRETS",
    "Effect",
    "Policy",
    "Rule",
    "Verdict",
    "parse_rule",
    "parse_timeout",
]


class Effect(str, enum.Enum):
    """What a rule says about a use."""

    ALLOW = "allow"
    ASK = "ask"
    DENY = "deny"

    def __str__(self) -> str:
        return self.value


_STRICTNESS = {Effect.ALLOW: 0, Effect.ASK: 1, Effect.DENY: 2}

HARMLESS_ENV = "default (harmless environment names, to read)"
"""The source of the default ``allow env:...`` rules: they allow reading; writes still ask."""

DEFAULT_SECRETS = ("/**/.env", "/**/.env.*", "/**/.git/**", "/**/.ssh/**", "/**/*.pem", "/**/*.key")
"""Paths that ask even inside the workspace: credentials and repository internals."""


@dataclass(frozen=True)
class Rule:
    """One line of a policy: a capability pattern and what to do about it."""

    capability: str
    """``kind:pattern`` as written, e.g. ``fs.read:data/**`` or ``net:*.github.com:443``."""
    effect: Effect
    source: str = "session"
    """Where the rule came from: ``default``, ``path/to/cave.toml:12``, ``session``."""
    timeout: float | None = None
    """``ask`` only: seconds to wait for a person before ``on_timeout`` decides; None waits."""
    on_timeout: Effect = Effect.DENY
    """``ask`` with a timeout only: ``deny`` (default) or ``allow`` (silence is consent)."""

    def __post_init__(self) -> None:
        if not isinstance(self.effect, Effect):
            object.__setattr__(self, "effect", Effect(self.effect))
        if not isinstance(self.on_timeout, Effect):
            object.__setattr__(self, "on_timeout", Effect(self.on_timeout))
        parse_capability(self.capability)  # raises ValueError with the reason
        if self.timeout is not None:
            object.__setattr__(self, "timeout", parse_timeout(self.timeout))
            if self.effect is not Effect.ASK:
                raise ValueError(
                    f"timeout= only makes sense on an ask rule, not on {self.effect.value} "
                    f"{self.capability}; drop it or write ask"
                )
        if self.on_timeout is Effect.ASK:
            raise ValueError("on_timeout must be deny or allow (ask is what timed out)")
        if self.on_timeout is Effect.ALLOW and self.timeout is None:
            raise ValueError(
                f"on_timeout=allow on {self.capability} needs a timeout=SECONDS to wait first"
            )

    def __str__(self) -> str:
        text = f"{self.effect.value} {self.capability}"
        if self.timeout is not None:
            text += f" timeout={self.timeout:g} on_timeout={self.on_timeout.value}"
        return text

    def options(self) -> dict[str, Any]:
        """The options beyond capability and effect, as written in TOML (empty when none)."""
        if self.timeout is None:
            return {}
        return {"timeout": self.timeout, "on_timeout": self.on_timeout.value}


_OPTION = re.compile(r"^(timeout|on_timeout)=(\S*)$")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(s|m|h)?\s*$")
_UNIT = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_timeout(value: Any) -> float:
    """Seconds from ``300``, ``2.5``, ``"90s"``, ``"5m"`` or ``"1h"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"timeout must be a number of seconds, not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(
                f"timeout {value!r} is not a duration; write seconds (300) or 90s, 5m, 1h"
            )
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {value!r}")
    return seconds


def parse_rule(text: str, *, source: str = "session") -> Rule:
    """``"allow fs.read:/data/**"`` -> Rule; for ``%cave policy allow ...``. Raises ValueError.

    Options follow the capability: ``ask net:* timeout=60 on_timeout=deny``. They are read from
    the end, so a capability may contain spaces (a path) as long as its last word is not one.
    """
    effect, _, rest = text.strip().partition(" ")
    try:
        eff = Effect(effect.lower())
    except ValueError:
        raise ValueError(
            f"{effect!r} is not an effect; write allow, ask or deny, then the capability"
        ) from None
    words = rest.strip().split(" ")
    options: dict[str, str] = {}
    while len(words) > 1 and re.match(r"^[a-z_]+=", words[-1]):
        match = _OPTION.match(words[-1])
        if match is None:
            raise ValueError(
                f"unknown option {words[-1]!r}; the options are timeout=SECONDS and "
                "on_timeout=deny|allow"
            )
        if match.group(1) in options:
            raise ValueError(f"{match.group(1)}= is given twice")
        options[match.group(1)] = match.group(2)
        words.pop()
    on_timeout = options.get("on_timeout", "deny").lower()
    if on_timeout not in ("allow", "deny"):
        raise ValueError(f"on_timeout={on_timeout} must be deny or allow")
    timeout = parse_timeout(options["timeout"]) if "timeout" in options else None
    return Rule(" ".join(words).strip(), eff, source, timeout, Effect(on_timeout))


@dataclass(frozen=True)
class Verdict:
    """What the policy says about one capability, and why."""

    effect: Effect
    rule: Rule | None
    """The deciding rule, or None when the fallback decided."""

    @property
    def reason(self) -> str:
        if self.rule is None:
            return "no rule matches (the fallback)"
        return f"rule {self.rule} ({self.rule.source})"


@dataclass(frozen=True)
class Policy:
    """A frozen policy. Build variants with ``with_rules`` / ``without`` (they return copies)."""

    workspace: Path
    """Relative fs patterns are anchored here (an absolute, symlink-resolved path)."""
    rules: tuple[Rule, ...] = ()
    """In order of definition; a later rule with the same capability replaces an earlier one."""
    fallback: Effect = Effect.ASK
    """The effect for a capability that no rule matches."""
    path_dirs: frozenset[str] = field(default_factory=frozenset, compare=False)
    """Directories where ``shell:NAME`` rules find programs (PATH when the policy was built)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", Path(os.path.realpath(self.workspace)))
        object.__setattr__(self, "fallback", Effect(self.fallback))
        if not self.path_dirs:
            object.__setattr__(self, "path_dirs", _path_dirs())
        seen: dict[str, Rule] = {}
        for rule in self.rules:
            seen.pop(rule.capability, None)
            seen[rule.capability] = rule
        object.__setattr__(self, "rules", tuple(seen.values()))
        _ = self._compiled  # report a bad pattern now, not at the first decision

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def default(cls, workspace: Path | str) -> Policy:
        """The default: read and write inside the workspace, secrets and the rest ask."""
        return cls(Path(workspace), default_rules())

    @classmethod
    def deny_all(cls, workspace: Path | str) -> Policy:
        """Nothing at all (not even reads inside the workspace): for tests and lock-down."""
        return cls(Path(workspace), (), Effect.DENY)

    # -- variants --------------------------------------------------------------------------
    def with_rules(self, *rules: Rule | tuple[str, str | Effect]) -> Policy:
        """A copy with ``rules`` added (a rule for the same capability replaces the old one)."""
        new = [r if isinstance(r, Rule) else Rule(r[0], Effect(r[1])) for r in rules]
        return replace(self, rules=(*self.rules, *new))

    def without(self, capability: str) -> Policy:
        """A copy without the rule for exactly ``capability`` (as written)."""
        return replace(self, rules=tuple(r for r in self.rules if r.capability != capability))

    def with_fallback(self, effect: Effect | str) -> Policy:
        return replace(self, fallback=Effect(effect))

    def with_paths(self, path_dirs: frozenset[str]) -> Policy:
        """A copy whose ``shell:NAME`` rules trust programs in ``path_dirs``."""
        return replace(self, path_dirs=frozenset(path_dirs))

    # -- deciding --------------------------------------------------------------------------
    def decide(self, capability: Capability) -> Verdict:
        """The policy's verdict for one concrete capability (no grants, no asking)."""
        return self._compiled.decide(capability)

    @cached_property
    def _compiled(self) -> _Compiled:
        return _Compiled(self)

    # -- serialising (checkpoints) ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for checkpoints."""
        return {
            "workspace": str(self.workspace),
            "fallback": self.fallback.value,
            "rules": [
                [r.capability, r.effect.value, r.source, *([r.options()] if r.options() else [])]
                for r in self.rules
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Inverse of ``to_dict``; raises ValueError on malformed data."""
        try:
            rules = tuple(_rule_from_list(item) for item in data["rules"])
            return cls(Path(data["workspace"]), rules, Effect(data.get("fallback", "ask")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a serialised policy: {exc!r}") from None


def _rule_from_list(item: Any) -> Rule:
    """``[capability, effect, source]`` or ``[..., {"timeout": s, "on_timeout": e}]``."""
    capability, effect, source, *more = item
    options: Mapping[str, Any] = more[0] if more else {}
    if len(more) > 1 or not isinstance(options, Mapping):
        raise TypeError(f"a rule is [capability, effect, source, options?], not {item!r}")
    return Rule(
        str(capability),
        Effect(effect),
        str(source),
        options.get("timeout"),
        Effect(options.get("on_timeout", "deny")),
    )


def default_rules() -> tuple[Rule, ...]:
    """The default rule list (workspace-relative patterns are anchored when compiled)."""
    d = "default"
    rules = [
        Rule("fs.read:**", Effect.ALLOW, d),
        Rule("fs.write:**", Effect.ALLOW, d),
        Rule("fs.delete:**", Effect.ASK, d),
    ]
    for secret in DEFAULT_SECRETS:
        rules.append(Rule(f"fs.read:{secret}", Effect.ASK, d))
        rules.append(Rule(f"fs.write:{secret}", Effect.ASK, d))
    rules.append(Rule("fs.write:cave.toml", Effect.ASK, d))
    py = "default (the Python installation, read-only, so imports work)"
    rules += [Rule(f"fs.read:{p}/**", Effect.ALLOW, py) for p in python_dirs()]
    rules += [
        Rule("fs.read:/dev/null", Effect.ALLOW, d),
        Rule("fs.write:/dev/null", Effect.ALLOW, d),
        Rule("shell:*", Effect.ASK, d),
        Rule("net:*", Effect.ASK, d),
        Rule("env:*", Effect.ASK, d),
        Rule("tool:*", Effect.ASK, d),
    ]
    rules += [Rule(f"env:{name}", Effect.ALLOW, HARMLESS_ENV) for name in DEFAULT_ENV_ALLOW]
    return tuple(rules)


def python_dirs() -> list[str]:
    """Where this interpreter's modules live (stdlib, site-packages, sys.path directories).

    Not the filesystem root, not a home directory, not a bare working directory entry ('').
    """
    found: list[str] = []
    home = os.path.realpath(os.path.expanduser("~"))
    candidates: list[str] = []
    for scheme_key in ("stdlib", "platstdlib", "purelib", "platlib"):
        candidates.append(sysconfig.get_paths().get(scheme_key, ""))
    candidates += [p for p in sys.path if p]
    candidates.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # cave itself
    for path in candidates:
        if not path or not os.path.isabs(path) or not os.path.isdir(path):
            continue
        real = os.path.realpath(path)
        if real in ("/", home) or real in found or len(real.strip("/").split("/")) < 2:
            continue
        found.append(real)
    return found


def _path_dirs() -> frozenset[str]:
    dirs = set()
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if entry and os.path.isabs(entry):
            dirs.add(os.path.normpath(entry))
    return frozenset(dirs)


class _Compiled:
    """Rules compiled for fast decisions: fs rules indexed by directory prefix, a small cache."""

    _CACHE_MAX = 4096

    def __init__(self, policy: Policy) -> None:
        self.fallback = policy.fallback
        self.by_kind: dict[str, list[tuple[Pattern, Rule]]] = {}
        self.fs_index: dict[str, dict[str, list[tuple[Pattern, Rule]]]] = {}
        for rule in policy.rules:
            kind, resource = parse_capability(rule.capability)
            for k in expand_kinds(kind):
                pattern = compile_pattern(
                    k, resource, workspace=policy.workspace, path_dirs=policy.path_dirs
                )
                if k.startswith("fs."):
                    self.fs_index.setdefault(k, {}).setdefault(pattern.prefix, []).append(
                        (pattern, rule)
                    )
                else:
                    self.by_kind.setdefault(k, []).append((pattern, rule))
        self.cache: dict[tuple[str, str], Verdict] = {}

    def candidates(self, capability: Capability) -> Iterable[tuple[Pattern, Rule]]:
        index = self.fs_index.get(capability.kind)
        if index is None:
            return self.by_kind.get(capability.kind, ())
        found: list[tuple[Pattern, Rule]] = []
        path = capability.resource
        # Every ancestor directory prefix of the path: "/", "/a/", "/a/b/", ... and the path
        # itself as a directory (a rule "dir/**" has prefix "dir/" and matches "dir").
        i = 0
        while i != -1:
            bucket = index.get(path[: i + 1])
            if bucket:
                found.extend(bucket)
            i = path.find("/", i + 1)
        bucket = index.get(path + "/")
        if bucket:
            found.extend(bucket)
        return found

    def decide(self, capability: Capability) -> Verdict:
        key = (capability.kind, capability.resource)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        best: tuple[int, int, int] | None = None
        best_rule: Rule | None = None
        denied: Rule | None = None
        for pattern, rule in self.candidates(capability):
            spec = pattern.match(capability.resource)
            if spec is None:
                continue
            if rule.effect is Effect.DENY:
                denied = rule
                break
            rank = (spec[0], spec[1], _STRICTNESS[rule.effect])
            if best is None or rank > best:
                best, best_rule = rank, rule
        if denied is not None:
            verdict = Verdict(Effect.DENY, denied)
        elif best_rule is not None:
            verdict = Verdict(best_rule.effect, best_rule)
        else:
            verdict = Verdict(self.fallback, None)
        if len(self.cache) >= self._CACHE_MAX:
            self.cache.clear()
        self.cache[key] = verdict
        return verdict
