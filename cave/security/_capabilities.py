"""Capabilities (what one use of the world is called) and the glob patterns that policies write.

A *capability* is ``kind:resource`` for one concrete use: ``fs.read:/home/me/proj/data.csv``,
``shell:/usr/bin/git``, ``net:api.github.com:443``, ``env:HOME``. A *pattern* is the same with
globs in the resource, as policy rules write it: ``fs.read:data/**``, ``shell:git``, ``net:*:443``.

Pattern language, per kind:

* ``fs.read``, ``fs.write``, ``fs.delete``: path globs. Relative patterns are anchored at the
  workspace, ``~`` is the home directory. ``*`` and ``?`` stay inside one path segment, ``[...]``
  is a character class, ``**`` is any number of segments (``dir/**`` also matches ``dir``).
  Requests carry absolute paths with symlinks resolved, so a pattern is matched against where a
  file really is. ``fs:<glob>`` is shorthand for all three kinds.
* ``shell``: a program. A pattern without ``/`` matches the program's file name, but only for
  programs found in a directory that was on ``PATH`` when the policy was compiled (so a ``git``
  symlink dropped in the workspace does not pass as ``shell:git``); a pattern with ``/`` matches
  the absolute path. ``*`` matches anything.
* ``net``: ``host``, ``host:port`` or ``unix:/path``; ``*`` matches anything, a missing port means
  any port. Hosts are compared in lower case; IPv6 hosts are written in brackets.
* ``env`` and ``tool``: names; ``*`` matches anything.

Specificity ("the most specific match wins"): of two matching patterns, the one whose *fixed
text reaches further into the resource* wins (``/**/*.pem`` beats ``proj/**`` for
``proj/k.pem``; ``proj/data/**`` beats ``proj/**``), then the one with more fixed characters.
It is computed from the actual match, so it is exact for the resource at hand.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FS_KINDS",
    "KINDS",
    "Capability",
    "Pattern",
    "compile_pattern",
    "expand_kinds",
    "parse_capability",
]

FS_KINDS = ("fs.read", "fs.write", "fs.delete")
KINDS = (*FS_KINDS, "shell", "net", "env", "tool")
"""Every capability kind a policy may name (``fs`` is accepted as shorthand for the three fs.*)."""


@dataclass(frozen=True)
class Capability:
    """One concrete use of the world, checked against the policy."""

    kind: str
    """One of :data:`KINDS`."""
    resource: str
    """Absolute real path (fs), program path (shell), ``host:port`` (net), a name (env, tool)."""

    def __str__(self) -> str:
        return f"{self.kind}:{self.resource}"


def parse_capability(text: str) -> tuple[str, str]:
    """Split ``kind:resource`` and check the kind; raise ``ValueError`` saying what is wrong."""
    kind, sep, resource = text.partition(":")
    kind = kind.strip()
    if not sep or not resource:
        raise ValueError(
            f"{text!r} is not a capability; write kind:resource, for example fs.read:data/**"
        )
    if kind not in KINDS and kind != "fs":
        raise ValueError(f"unknown capability kind {kind!r}; known kinds: fs, {', '.join(KINDS)}")
    return kind, resource


def expand_kinds(kind: str) -> tuple[str, ...]:
    """``fs`` -> the three fs kinds; any other kind -> itself."""
    return FS_KINDS if kind == "fs" else (kind,)


class Pattern:
    """A compiled pattern: ``match(resource)`` gives its specificity, or None."""

    __slots__ = (
        "basename_only",
        "kind",
        "literals",
        "needle",
        "prefix",
        "regex",
        "text",
        "trailing_group",
        "trusted_dirs",
    )

    def __init__(
        self,
        kind: str,
        text: str,
        regex: re.Pattern[str],
        literals: int,
        trailing_group: int | None,
        prefix: str,
        basename_only: bool = False,
        trusted_dirs: frozenset[str] = frozenset(),
    ) -> None:
        self.kind = kind
        self.text = text
        """The resource part as it will be matched (absolute for fs)."""
        self.regex = regex
        self.literals = literals
        self.trailing_group = trailing_group
        self.prefix = prefix
        """For fs: the directory part before the first wildcard (the rule index key)."""
        self.basename_only = basename_only
        self.trusted_dirs = trusted_dirs
        self.needle = _longest_literal(text)
        """Fixed text any match must contain: a cheap test before the regex."""

    def match(self, resource: str) -> tuple[int, int] | None:
        """(position where the fixed text ends, fixed characters) if ``resource`` matches."""
        subject = resource
        if self.basename_only:
            directory, _, subject = resource.rpartition("/")
            if directory and directory not in self.trusted_dirs:
                return None
        if self.needle not in subject:
            return None
        m = self.regex.fullmatch(subject)
        if m is None:
            return None
        end = len(subject)
        if self.trailing_group is not None:
            start = m.start(self.trailing_group)
            if start >= 0:
                end = start
        return end, self.literals

    def __repr__(self) -> str:
        return f"Pattern({self.kind}:{self.text})"


def compile_pattern(
    kind: str,
    resource: str,
    *,
    workspace: Path,
    path_dirs: frozenset[str] = frozenset(),
) -> Pattern:
    """Compile one rule's resource pattern; raise ``ValueError`` with the reason if it is bad."""
    if kind in FS_KINDS:
        text = _absolute_glob(resource, workspace)
        regex, literals, trailing = _translate(text, path_glob=True)
        return Pattern(kind, text, regex, literals, trailing, _fs_prefix(text))
    if kind == "shell":
        if "/" in resource:
            text = os.path.normpath(os.path.expanduser(resource))
            regex, literals, trailing = _translate(text, path_glob=False)
            return Pattern(kind, text, regex, literals, trailing, "")
        regex, literals, trailing = _translate(resource, path_glob=False)
        return Pattern(kind, resource, regex, literals, trailing, "", True, path_dirs)
    if kind == "net":
        text = _net_pattern(resource)
        regex, literals, trailing = _translate(text, path_glob=False, port_optional=True)
        return Pattern(kind, text, regex, literals, trailing, "")
    if kind in ("env", "tool"):
        regex, literals, trailing = _translate(resource, path_glob=False)
        return Pattern(kind, resource, regex, literals, trailing, "")
    raise ValueError(f"unknown capability kind {kind!r}")


def _absolute_glob(pattern: str, workspace: Path) -> str:
    pattern = pattern.strip()
    if pattern.startswith("~"):
        pattern = os.path.expanduser(pattern)
    if not pattern.startswith("/"):
        pattern = str(workspace).rstrip("/") + "/" + pattern
    # Collapse "//" and "/./" but keep "**" segments and trailing "/**" as written.
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{pattern!r}: '..' is not allowed in a path pattern; write the real path")
    return "/" + "/".join(parts)


def _fs_prefix(text: str) -> str:
    """The directory before the first wildcard: '/a/b/**/c' -> '/a/b/'."""
    cut = len(text)
    for ch in "*?[":
        i = text.find(ch)
        if i != -1:
            cut = min(cut, i)
    head = text[:cut]
    if cut == len(text):  # no wildcard: the parent directory
        return head.rpartition("/")[0] + "/"
    return head[: head.rfind("/") + 1] or "/"


def _net_pattern(resource: str) -> str:
    r = resource.strip()
    if r.startswith("unix:"):
        return r
    r = r.lower()
    if r.startswith("["):  # [v6]:port
        end = r.find("]")
        if end == -1:
            raise ValueError(f"{resource!r}: unclosed '[' in an IPv6 host")
        host, rest = r[: end + 1], r[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"{resource!r}: expected ':port' after the IPv6 host")
    elif r.count(":") > 1:
        raise ValueError(f"{resource!r}: write IPv6 hosts in brackets, like [::1]:8080")
    else:
        host, _, port = r.partition(":")
    if not host:
        raise ValueError(f"{resource!r}: the host is empty (use * for any host)")
    if port and port != "*" and not port.isdigit():
        raise ValueError(f"{resource!r}: the port must be a number or *")
    return f"{host}:{port}" if port else host


def _translate(
    pattern: str, *, path_glob: bool, port_optional: bool = False
) -> tuple[re.Pattern[str], int, int | None]:
    """Glob -> (regex with one group per wildcard, fixed characters, first trailing group)."""
    out: list[str] = []
    literals = 0
    group = 0
    trailing: int | None = None  # group that starts the run of wildcards at the end, if any
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if path_glob and pattern.startswith("/**", i) and (i + 3 == n or pattern[i + 3] == "/"):
            group += 1
            if i + 3 == n:  # trailing "/**": the directory itself or anything below it
                out.append("(/.*)?")
                i += 3
            else:  # "/**/": one slash, or any number of segments between slashes
                out.append("(/(?:.*/)?)")
                i += 4
            trailing = trailing if trailing is not None else group
            continue
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            group += 1
            out.append("([^/]*)" if path_glob and j - i == 1 else "(.*)")
            trailing = trailing if trailing is not None else group
            i = j
            continue
        if c == "?":
            group += 1
            out.append("([^/])" if path_glob else "(.)")
            trailing = trailing if trailing is not None else group
            i += 1
            continue
        if c == "[" and path_glob:
            j = pattern.find("]", i + 2 if pattern.startswith("[!", i) else i + 1)
            if j == -1:
                raise ValueError(f"{pattern!r}: unclosed '[' in a character class")
            body = pattern[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            group += 1
            out.append("([" + body.replace("\\", "\\\\") + "])")
            trailing = trailing if trailing is not None else group
            i = j + 1
            continue
        out.append(re.escape(c))
        literals += 1
        trailing = None  # fixed text after the wildcards: they are not trailing any more
        i += 1
    if port_optional and not pattern.startswith("unix:") and ":" not in _strip_v6(pattern):
        group += 1
        out.append("(:[0-9]+)?")
        trailing = trailing if trailing is not None else group
    try:
        regex = re.compile("".join(out), re.DOTALL)
    except re.error as exc:
        raise ValueError(f"{pattern!r}: {exc}") from None
    return regex, literals, trailing


def _longest_literal(pattern: str) -> str:
    if pattern.endswith("/**"):  # "dir/**" also matches "dir", without the slash
        pattern = pattern[:-3]
    best, i = "", 0
    run: list[str] = []
    while i < len(pattern):
        c = pattern[i]
        if c in "*?[":
            if len("".join(run)) > len(best):
                best = "".join(run)
            run = []
            if c == "[":
                end = pattern.find("]", i + 2)
                i = end + 1 if end != -1 else len(pattern)
                continue
        else:
            run.append(c)
        i += 1
    tail = "".join(run)
    return tail if len(tail) > len(best) else best


def _strip_v6(pattern: str) -> str:
    return pattern[pattern.find("]") + 1 :] if pattern.startswith("[") else pattern
