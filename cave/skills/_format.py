"""One skill on disk, in the Agent Skills format: a directory with a ``SKILL.md``.

``SKILL.md`` starts with YAML front matter between ``---`` lines, then a Markdown body (the
instructions). The fields, as the Agent Skills specification (agentskills.io) has them:

* ``name`` (required): 1-64 characters, lower-case letters, digits and single hyphens, not at
  either end; it should match the directory name (a mismatch is reported, not refused: many
  published skills differ in case only).
* ``description`` (required): 1-1024 characters, what the skill does and when to use it.
* ``license``, ``compatibility`` (<= 500 characters), ``metadata`` (string map),
  ``allowed-tools``: kept, not acted on.
* ``capabilities`` (a Cave extension): the capabilities the skill's code needs, as a list or a
  space-separated string of ``kind:resource`` (``fs.write:out/**``, ``net:api.example.com:443``).
  Granted for the session only when a person approves the skill's code, never past a ``deny``.
  Only exact resources and ``dir/**`` subtrees can be granted (that is what a grant can cover).

Code: ``injection.py`` next to ``SKILL.md`` (CaveAgent's name for it). Its public names (its
``__all__``, or every name not starting with ``_`` that it defines) are bound into the agent's
namespace when the skill is activated, after approval.

The front matter is read by a small parser for the subset of YAML skills use (``key: value``
scalars, quoted or plain, ``>``/``|`` block scalars, ``- item`` lists, ``[a, b]`` flow lists,
and one level of nested map for ``metadata``); anything else is reported with its line, not
guessed at. (PyYAML is not a dependency of Cave.)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import SkillError

__all__ = ["CODE_FILE", "SKILL_FILE", "Skill", "load_skill", "parse_front_matter"]

SKILL_FILE = "SKILL.md"
CODE_FILE = "injection.py"
MAX_NAME = 64
MAX_DESCRIPTION = 1024
_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*):(?:\s+(.*))?$")


@dataclass(frozen=True)
class Skill:
    """A parsed skill: what the prompt lists (name, description) and what activation gives."""

    name: str
    description: str
    path: Path
    """The skill's directory (resolved)."""
    source: str
    """Where it was found: ``workspace``, ``user``, or ``added`` (``%cave skills add``)."""
    body: str
    """The Markdown instructions after the front matter."""
    capabilities: tuple[str, ...] = ()
    """Declared capabilities for its code (``kind:resource``), granted on approval."""
    fields: dict[str, Any] = field(default_factory=dict, compare=False)
    """Every front matter field, as parsed."""
    warnings: tuple[str, ...] = ()

    @property
    def code_path(self) -> Path | None:
        """``injection.py``, if the skill ships code."""
        path = self.path / CODE_FILE
        return path if path.is_file() else None

    def code(self) -> tuple[bytes, str] | None:
        """(source bytes, sha256) of the skill's code as it is on disk now, or None."""
        path = self.code_path
        if path is None:
            return None
        data = path.read_bytes()
        return data, hashlib.sha256(data).hexdigest()


def load_skill(directory: Path, source: str) -> Skill:
    """Parse ``directory/SKILL.md``; ``SkillError`` naming the file and the reason."""
    skill_md = directory / SKILL_FILE
    where = str(skill_md)
    try:
        text = skill_md.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SkillError(where, f"no {SKILL_FILE} in this directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SkillError(where, f"cannot be read ({exc})") from None
    fields, body = parse_front_matter(text, where)
    name = fields.get("name")
    if not isinstance(name, str) or not name:
        raise SkillError(where, "the front matter has no `name:` (add `name: my-skill`)")
    if len(name) > MAX_NAME:
        raise SkillError(
            where, f"the name is {len(name)} characters; the limit is {MAX_NAME} (shorten it)"
        )
    if not _NAME.match(name):
        raise SkillError(
            where,
            f"the name {name!r} may only hold lower-case letters, digits and single hyphens, "
            "not at either end (e.g. `csv-tools`)",
        )
    description = fields.get("description")
    if not isinstance(description, str) or not description.strip():
        raise SkillError(where, "the front matter has no `description:` (say what it does)")
    if len(description) > MAX_DESCRIPTION:
        raise SkillError(
            where,
            f"the description is {len(description)} characters; the limit is "
            f"{MAX_DESCRIPTION} (move detail into the body)",
        )
    capabilities = _capabilities(fields.get("capabilities"), where)
    warnings = []
    if name != directory.name:
        warnings.append(f"the name {name!r} differs from its directory {directory.name!r}")
    return Skill(
        name=name,
        description=" ".join(description.split()),
        path=directory.resolve(),
        source=source,
        body=body.strip(),
        capabilities=capabilities,
        fields=fields,
        warnings=tuple(warnings),
    )


def _capabilities(value: Any, where: str) -> tuple[str, ...]:
    from ..security._capabilities import parse_capability

    if value is None:
        return ()
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list):
        raise SkillError(where, "`capabilities:` must be a list of kind:resource strings")
    out = []
    for item in items:
        text = str(item).strip()
        try:
            kind, resource = parse_capability(text)
        except ValueError as exc:
            raise SkillError(where, f"capability {text!r}: {exc}") from None
        wild = resource[:-3] if resource.endswith("/**") else resource
        if kind == "fs" or any(c in wild for c in "*?["):
            raise SkillError(
                where,
                f"capability {text!r}: a skill may declare exact resources or a `dir/**` "
                "subtree of one fs kind (fs.read, fs.write, fs.delete), not other globs",
            )
        out.append(f"{kind}:{resource}")
    return tuple(out)


# -- the YAML subset -------------------------------------------------------------------------
def parse_front_matter(text: str, where: str) -> tuple[dict[str, Any], str]:
    """(fields, body) of a ``SKILL.md``; ``SkillError`` with the line for anything unreadable."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise SkillError(
            where, "no YAML front matter: the file must start with a `---` line, then "
            "`name:` and `description:`, then `---`"
        )
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise SkillError(where, "the front matter is not closed by a `---` line") from None
    fields = _mapping(lines[1:end], where, first_line=2)
    return fields, "\n".join(lines[end + 1 :])


def _mapping(lines: list[str], where: str, *, first_line: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    while i < len(lines):
        raw = lines[i]
        if not raw.strip() or raw.lstrip().startswith("#"):
            i += 1
            continue
        lineno = first_line + i
        if raw[0] in " \t":
            raise SkillError(where, f"line {lineno}: unexpected indentation: {raw.strip()!r}")
        m = _KEY.match(raw.rstrip())
        if m is None:
            raise SkillError(where, f"line {lineno}: expected `key: value`, got {raw.strip()!r}")
        key, value = m.group(1), (m.group(2) or "").strip()
        if key in out:
            raise SkillError(where, f"line {lineno}: `{key}` is given twice")
        block = []
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j][0] in " \t"):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        out[key] = _value(value, block, where, lineno)
        i = j
    return out


def _value(value: str, block: list[str], where: str, lineno: int) -> Any:
    if value in (">", "|", ">-", "|-", ">+", "|+"):
        texts = [b.strip() for b in block]
        return (" " if value.startswith(">") else "\n").join(texts).strip()
    if block and value:
        raise SkillError(where, f"line {lineno}: a value and an indented block; pick one")
    if block:
        items = [b.strip() for b in block if b.strip()]
        if all(b.startswith("- ") or b == "-" for b in items):
            return [_scalar(b[1:].strip(), where, lineno) for b in items]
        nested: dict[str, Any] = {}
        for b in items:
            m = _KEY.match(b)
            if m is None:
                raise SkillError(where, f"line {lineno}: cannot read {b!r} (write `key: value`)")
            nested[m.group(1)] = _scalar((m.group(2) or "").strip(), where, lineno)
        return nested
    return _scalar(value, where, lineno)


def _scalar(value: str, where: str, lineno: int) -> Any:
    if value.startswith("[") and value.endswith("]"):
        inner = value[1:-1].strip()
        return [_scalar(v.strip(), where, lineno) for v in inner.split(",")] if inner else []
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        if value[0] == '"':
            inner = inner.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        else:
            inner = inner.replace("''", "'")
        return inner
    if value[:1] in "\"'":
        raise SkillError(where, f"line {lineno}: unclosed quote in {value!r}")
    if " #" in value:
        value = value.split(" #", 1)[0].rstrip()
    return value
