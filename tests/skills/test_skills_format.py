"""Skills on disk: parsing (valid and each malformed case), discovery, the bounded listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from cave import SkillError
from cave.skills import SkillRegistry, load_skill
from cave.skills._registry import LISTING_CHARS


def write_skill(root: Path, dirname: str, text: str, code: str | None = None) -> Path:
    d = root / dirname
    d.mkdir(parents=True, exist_ok=True)
    (d / "SKILL.md").write_text(text)
    if code is not None:
        (d / "injection.py").write_text(code)
    return d


def good(name: str, description: str = "Checks things. Use when checking.") -> str:
    return f"---\nname: {name}\ndescription: {description}\n---\n# {name}\nDo it well.\n"


def test_a_valid_skill_with_every_field_form(tmp_path: Path) -> None:
    text = (
        "---\n"
        "name: csv-tools\n"
        "description: >\n  Validates CSV frames.\n  Use when data arrives.\n"
        "license: 'MIT'\n"
        "metadata:\n  author: me\n  version: \"1.0\"\n"
        "capabilities:\n  - fs.write:out/**\n  - net:api.example.com:443\n"
        "allowed-tools: [python]\n"
        "---\n# CSV tools\n\nCall `check(df)`.\n"
    )
    skill = load_skill(write_skill(tmp_path, "csv-tools", text), "workspace")
    assert skill.name == "csv-tools"
    assert skill.description == "Validates CSV frames. Use when data arrives."
    assert skill.body.startswith("# CSV tools") and "check(df)" in skill.body
    assert skill.capabilities == ("fs.write:out/**", "net:api.example.com:443")
    assert skill.fields["metadata"] == {"author": "me", "version": "1.0"}
    assert skill.fields["license"] == "MIT" and skill.fields["allowed-tools"] == ["python"]
    assert skill.warnings == () and skill.code_path is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("# no front matter\n", "no YAML front matter"),
        ("---\nname: x\ndescription: y\n", "not closed"),
        ("---\ndescription: y\n---\n", "no `name:`"),
        ("---\nname: x\n---\n", "no `description:`"),
        (f"---\nname: {'a' * 65}\ndescription: y\n---\n", "65 characters; the limit is 64"),
        ("---\nname: Bad_Name\ndescription: y\n---\n", "lower-case letters"),
        (f"---\nname: x\ndescription: {'d' * 1025}\n---\n", "limit is 1024"),
        ("---\nname: x\n  indented: 1\ndescription: y\n---\n", "a value and an indented block"),
        ("---\nname: x\ndescription: y\ncapabilities: fs.write:o/*.csv\n---\n", "not other globs"),
        ("---\nname: x\ndescription: y\ncapabilities: bogus:thing\n---\n", "unknown capability"),
        ("---\nname: x\nname: z\ndescription: y\n---\n", "given twice"),
        ("---\nname: 'x\ndescription: y\n---\n", "unclosed quote"),
    ],
)
def test_each_malformed_skill_names_the_file_and_the_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    d = write_skill(tmp_path, "x", text)
    with pytest.raises(SkillError) as info:
        load_skill(d, "workspace")
    assert info.value.path == str(d / "SKILL.md")
    assert reason in info.value.reason, info.value.reason
    assert str(d / "SKILL.md") in str(info.value)


def test_discovery_reports_bad_and_duplicate_skills_and_keeps_the_rest(tmp_path: Path) -> None:
    ws, user, extra = tmp_path / "ws", tmp_path / "user", tmp_path / "extra"
    write_skill(ws, "alpha", good("alpha"))
    write_skill(ws, "broken", "no front matter\n")
    write_skill(user, "beta", good("beta"))
    write_skill(user, "alpha", good("alpha", "A second alpha."))
    write_skill(extra, "gamma", good("gamma"))
    registry = SkillRegistry(tmp_path, roots=[(ws, "workspace"), (user, "user")])
    assert sorted(registry.skills) == ["alpha", "beta"]
    assert registry.skills["alpha"].source == "workspace"
    reasons = {p.path: p.reason for p in registry.problems}
    assert "no YAML front matter" in reasons[str(ws / "broken" / "SKILL.md")]
    assert "duplicate name 'alpha'" in reasons[str(user / "alpha" / "SKILL.md")]
    assert registry.add(extra) == ["gamma"]
    assert registry.skills["gamma"].source == "added"
    with pytest.raises(SkillError, match="holds no SKILL.md"):
        registry.add(tmp_path)


def test_the_listing_holds_names_and_descriptions_only_and_stays_bounded(tmp_path: Path) -> None:
    root = tmp_path / "skills"
    for i in range(200):
        body = f"SECRET-BODY-{i}"
        write_skill(root, f"skill-{i:03d}", good(f"skill-{i:03d}", "d" * 600) + body)
    registry = SkillRegistry(tmp_path, roots=[(root, "workspace")])
    assert len(registry.skills) == 200
    listing = registry.listing()
    assert len(listing) <= LISTING_CHARS
    assert "SECRET-BODY" not in listing
    assert "skill-000: " in listing and "more (skills.list() shows them)" in listing
    # Stable: the same set of skills gives the same text (the prompt cache keeps it).
    assert SkillRegistry(tmp_path, roots=[(root, "workspace")]).listing() == listing
    # In the request it is part of the first (cached) system block, not the manifest's.
    from cave.agent._context import system_blocks

    fixed, manifest = system_blocks("fs: files", "(no objects)", skills=listing)
    assert listing in fixed["text"] and "cache_control" in fixed
    assert "skill-000" not in manifest["text"]
    assert len(fixed["text"]) - len(system_blocks("fs: files", "")[0]["text"]) <= LISTING_CHARS + 2
