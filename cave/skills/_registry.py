"""The skills a session knows: discovery, problems, the bounded prompt listing, activation state.

Discovered from ``<workspace>/.cave/skills/`` (``workspace``), ``<config dir>/skills/`` (``user``:
``$CAVE_CONFIG_DIR``, ``$XDG_CONFIG_HOME/cave`` or ``~/.config/cave``) and paths added with
``%cave skills add PATH`` (``added``; a skill directory, or a directory of them). A malformed
skill is recorded as a problem (file and reason) and the others load; of two skills with the
same name the first found wins (workspace, then user, then added) and the other is a problem.

The prompt lists each skill's name and description only, sorted by name (so the listing, in the
cached part of the system prompt, changes only when the set of skills does), each description
cut to ``DESCRIPTION_CHARS`` and the whole listing to ``LISTING_CHARS``; skills that do not fit
are counted and reachable through ``skills.list()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from .._env import config_dir, session_dir
from .._errors import SkillError
from ._format import SKILL_FILE, Skill, load_skill

__all__ = ["DESCRIPTION_CHARS", "LISTING_CHARS", "SkillRegistry"]

DESCRIPTION_CHARS = 240
LISTING_CHARS = 6000


class SkillRegistry:
    """Skills by name, the problems found, which are active and which code was approved."""

    def __init__(self, workspace: Path, *, roots: Iterable[tuple[Path, str]] | None = None):
        self.workspace = workspace
        self._roots = list(roots) if roots is not None else [
            (session_dir(workspace=workspace) / "skills", "workspace"),
            (config_dir() / "skills", "user"),
        ]
        self.added: list[Path] = []
        self.skills: dict[str, Skill] = {}
        self.problems: list[SkillError] = []
        self.active: list[str] = []
        """Activated skills, in order (a checkpoint carries these)."""
        self.approved: dict[str, str] = {}
        """Skill name -> sha256 of the code a person approved (a changed file asks again)."""
        self.loaded: dict[str, list[str]] = {}
        """Skill name -> names its code bound into the agent namespace."""
        self._lock = threading.Lock()
        self.refresh()

    # -- discovery ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Scan the roots and the added paths again."""
        skills: dict[str, Skill] = {}
        problems: list[SkillError] = []
        for root, source in [*self._roots, *((p, "added") for p in self.added)]:
            for directory in _skill_dirs(root):
                try:
                    skill = load_skill(directory, source)
                except SkillError as exc:
                    problems.append(exc)
                    continue
                if skill.name in skills:
                    first = skills[skill.name].path / SKILL_FILE
                    problems.append(
                        SkillError(
                            str(directory / SKILL_FILE),
                            f"duplicate name {skill.name!r} (already loaded from {first}); "
                            "rename one of them",
                        )
                    )
                    continue
                skills[skill.name] = skill
        with self._lock:
            self.skills, self.problems = skills, problems

    def add(self, path: Path) -> list[str]:
        """Add a skill directory (or a directory of skills); returns the names it brought."""
        path = path.expanduser().resolve()
        if not path.is_dir():
            raise SkillError(str(path), "not a directory (give a skill's directory, or one "
                             "that holds skill directories)")
        if not _skill_dirs(path):
            raise SkillError(str(path), f"holds no {SKILL_FILE} (nor do its sub-directories)")
        before = set(self.skills)
        if path not in self.added:
            self.added.append(path)
        self.refresh()
        return sorted(set(self.skills) - before)

    def get(self, name: str) -> Skill:
        skill = self.skills.get(name)
        if skill is None:
            known = ", ".join(sorted(self.skills)) or "none installed"
            raise LookupError(f"no skill named {name!r} (skills: {known})")
        return skill

    # -- the prompt ----------------------------------------------------------------------------
    def listing(self) -> str:
        """Name and description of each skill, bounded (see the module doc); '' if none."""
        if not self.skills:
            return ""
        lines = [
            "Skills (instructions you can load when a task needs them): call "
            "`skills.activate(name)` to print a skill's instructions and bind its functions, "
            "`skills.read(name, path)` for a file it ships, `skills.list()` for all of them."
        ]
        used = len(lines[0])
        names = sorted(self.skills)
        for i, name in enumerate(names):
            description = self.skills[name].description
            if len(description) > DESCRIPTION_CHARS:
                description = description[: DESCRIPTION_CHARS - 3] + "..."
            line = f"- {name}: {description}"
            if used + len(line) + 1 > LISTING_CHARS:
                lines.append(f"- ... and {len(names) - i} more (skills.list() shows them)")
                break
            lines.append(line)
            used += len(line) + 1
        return "\n".join(lines)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(name, description, where from, state) for ``%cave skills``."""
        rows = []
        for name in sorted(self.skills):
            skill = self.skills[name]
            state = "active" if name in self.active else "available"
            if name in self.loaded:
                state += " (code loaded)"
            rows.append((name, skill.description, f"{skill.source}: {skill.path}", state))
        return rows


def _skill_dirs(root: Path) -> list[Path]:
    """``root`` itself if it holds SKILL.md, else its sub-directories that do (sorted)."""
    try:
        if (root / SKILL_FILE).is_file():
            return [root]
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and (p / SKILL_FILE).exists())
    except OSError:
        return []
