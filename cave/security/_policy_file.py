"""Loading a policy from TOML (the edge where text becomes a ``Policy``) and showing one.

File format (``cave.toml`` in the project, and ``~/.config/cave/cave.toml`` for the user)::

    [policy]
    fallback = "ask"                    # optional: what no rule matches gets
    defaults = true                     # optional: start from the default rules (default true)
    "fs.read:/data/**" = "allow"        # capability pattern = allow | ask | deny
    "net:api.github.com:443" = "allow"
    "shell:git" = "ask"
    # an ask with a timeout: after 300 s without a decision, on_timeout decides (deny by default)
    "fs.write:/data/**" = { effect = "ask", timeout = 300, on_timeout = "deny" }

A rule's value is an effect, or a table with ``effect`` and the options ``timeout`` (seconds, or
a string such as ``"90s"``, ``"5m"``, ``"1h"``) and ``on_timeout`` (``"deny"`` or ``"allow"``).
The table may also be written as a section, ``[policy."fs.write:/data/**"]``, after the plain
rules (TOML puts every key below a section header into that section).

Layering: the default rules, then the user file, then the project file. A later rule for the
same capability (as written) replaces an earlier one; otherwise all rules apply together (deny
wins, then the most specific). ``defaults = false`` in a file drops the rules loaded before it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import tomllib

from .._errors import PolicyFileError
from ._capabilities import parse_capability
from ._policy import Effect, Policy, Rule, default_rules, parse_timeout

__all__ = ["format_policy", "load_policy", "user_policy_file"]

PROJECT_FILE = "cave.toml"


def user_policy_file() -> Path:
    """``cave.toml`` in the user's config dir (``cave._env.config_dir``)."""
    from .._env import config_dir

    return config_dir() / PROJECT_FILE


def load_policy(
    workspace: Path, *, project_file: Path | None = None, user_file: Path | None = None
) -> Policy:
    """The effective policy for ``workspace``: defaults, then the user file, then the project's.

    Missing files are skipped. A file that does not parse, or names an unknown capability kind,
    an invalid pattern or an unknown effect, raises ``PolicyFileError(path, line, problem)``.
    """
    workspace = Path(os.path.realpath(workspace))
    project = project_file if project_file is not None else workspace / PROJECT_FILE
    user = user_file if user_file is not None else user_policy_file()
    rules: list[Rule] = list(default_rules())
    fallback = Effect.ASK
    for path in (user, project):
        if not path.is_file():
            continue
        table = _read(path)
        if table is None:
            continue
        file_rules, file_fallback, keep_defaults = _parse(path, table, workspace)
        if not keep_defaults:
            rules = []
        rules += file_rules
        fallback = file_fallback or fallback
    try:
        return Policy(workspace, tuple(rules), fallback)
    except ValueError as exc:  # a pattern that only fails when compiled together: unlikely
        raise PolicyFileError(str(project), None, str(exc)) from None


def _read(path: Path) -> dict[str, Any] | None:
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(m.group(1)) if m else None
        problem = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise PolicyFileError(str(path), line, f"not valid TOML: {problem}") from None
    policy = data.get("policy")
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise PolicyFileError(str(path), _line_of(path, "policy"), "[policy] must be a table")
    return policy


def _parse(
    path: Path, table: dict[str, Any], workspace: Path
) -> tuple[list[Rule], Effect | None, bool]:
    rules: list[Rule] = []
    fallback: Effect | None = None
    keep_defaults = True
    for key, value in table.items():
        line = _line_of(path, key)
        if key == "fallback":
            fallback = _effect(path, line, key, value)
            continue
        if key == "defaults":
            if not isinstance(value, bool):
                raise PolicyFileError(str(path), line, "defaults must be true or false")
            keep_defaults = value
            continue
        try:
            parse_capability(key)
        except ValueError as exc:
            raise PolicyFileError(str(path), line, str(exc)) from None
        rule = _rule(path, line, key, value)
        try:
            Policy(workspace, (rule,))  # compile it alone, to blame the right line
        except ValueError as exc:
            raise PolicyFileError(str(path), line, f"bad pattern in {key!r}: {exc}") from None
        rules.append(rule)
    return rules, fallback, keep_defaults


_RULE_KEYS = ("effect", "timeout", "on_timeout")


def _rule(path: Path, line: int | None, key: str, value: Any) -> Rule:
    """One rule from ``"cap" = "ask"`` or ``"cap" = { effect = "ask", timeout = 300, ... }``."""
    source = f"{path}:{line}" if line else str(path)
    if not isinstance(value, dict):
        return Rule(key, _effect(path, line, key, value), source)
    unknown = sorted(set(value) - set(_RULE_KEYS))
    if unknown:
        raise PolicyFileError(
            str(path),
            line,
            f"{key}: unknown option {unknown[0]!r}; a rule table takes effect, timeout and "
            "on_timeout",
        )
    if "effect" not in value:
        raise PolicyFileError(
            str(path), line, f'{key}: the table needs effect = "allow", "ask" or "deny"'
        )
    effect = _effect(path, line, f"{key}.effect", value["effect"])
    timeout = None
    if "timeout" in value:
        try:
            timeout = parse_timeout(value["timeout"])
        except ValueError as exc:
            raise PolicyFileError(str(path), line, f"{key}: {exc}") from None
    on_timeout = value.get("on_timeout", "deny")
    if not isinstance(on_timeout, str) or on_timeout.lower() not in ("allow", "deny"):
        raise PolicyFileError(
            str(path), line, f'{key}: on_timeout = {on_timeout!r} must be "deny" or "allow"'
        )
    try:
        return Rule(key, effect, source, timeout, Effect(on_timeout.lower()))
    except ValueError as exc:
        raise PolicyFileError(str(path), line, f"{key}: {exc}") from None


def _effect(path: Path, line: int | None, key: str, value: Any) -> Effect:
    try:
        return Effect(str(value).lower()) if isinstance(value, str) else Effect(value)
    except ValueError:
        raise PolicyFileError(
            str(path), line, f'{key} = {value!r}: the value must be "allow", "ask" or "deny"'
        ) from None


def _line_of(path: Path, key: str) -> int | None:
    """The line where ``key`` is defined (tomllib does not report positions for valid files)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    quoted = re.compile(r"^\s*(['\"])" + re.escape(key) + r"\1\s*=")
    bare = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    header = re.compile(r"^\s*\[\s*" + re.escape(key) + r"\s*\]")
    section = re.compile(r"^\s*\[\s*policy\s*\.\s*(['\"])" + re.escape(key) + r"\1\s*\]")
    for number, text in enumerate(lines, start=1):
        if quoted.match(text) or bare.match(text) or header.match(text) or section.match(text):
            return number
    return None


def format_policy(policy: Policy) -> str:
    """The effective policy as a table, for ``%cave policy``: deny first, then by kind."""
    order = {Effect.DENY: 0, Effect.ASK: 1, Effect.ALLOW: 2}
    kind_order = ("fs.read", "fs.write", "fs.delete", "fs", "shell", "net", "env", "tool")

    def key(rule: Rule) -> tuple[int, int, str]:
        kind = rule.capability.partition(":")[0]
        k = kind_order.index(kind) if kind in kind_order else len(kind_order)
        return (k, order[rule.effect], rule.capability)

    def shown(rule: Rule) -> str:
        if rule.timeout is None:
            return rule.capability
        return f"{rule.capability} timeout={rule.timeout:g} on_timeout={rule.on_timeout.value}"

    lines = [f"Cave policy for {policy.workspace}", ""]
    width = max([len(shown(r)) for r in policy.rules] + [10])
    lines.append(f"  {'effect':<6}  {'capability':<{width}}  source")
    for rule in sorted(policy.rules, key=key):
        lines.append(f"  {rule.effect.value:<6}  {shown(rule):<{width}}  {rule.source}")
    lines += [
        "",
        f"  anything else: {policy.fallback.value}",
        "  Relative fs patterns are inside the workspace. Deny wins; otherwise the most specific",
        "  rule decides (on a tie, ask beats allow). Change it for this session with",
        "  `%cave policy allow|ask|deny CAPABILITY`, or edit cave.toml and `%cave policy reload`.",
        "  An ask may time out: `%cave policy ask CAPABILITY timeout=300 [on_timeout=deny|allow]`.",
    ]
    return "\n".join(lines)
