"""Skills through a real Cave kernel and the loopback Anthropic server, approvals clicked as
JupyterLab clicks them: progressive disclosure, code approval by hash, declared capabilities."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "approvals"))
from test_approvals_kernel import Rig, Widgets, clicker  # noqa: E402

from cave.testing import reply  # noqa: E402

pytestmark = pytest.mark.slow

CODE = (
    "def validate(rows):\n    '''Rows with a missing value.'''\n"
    "    return [r for r in rows if None in r]\n"
)


def make_skill(root: Path, name: str, body: str, code: str | None, caps: str = "") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    extra = f"capabilities: {caps}\n" if caps else ""
    (d / "SKILL.md").write_text(
        f"---\nname: {name}\ndescription: Checks rows for {name}. Use on tables.\n{extra}---\n"
        f"{body}\n"
    )
    (d / "reference.md").write_text(f"reference of {name}")
    if code is not None:
        (d / "injection.py").write_text(code)
    return d


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("skills-kernel")
    skills = root / "workspace" / ".cave" / "skills"
    make_skill(skills, "row-check", "ROW-CHECK-BODY: call validate(rows).", CODE)
    make_skill(skills, "denied-skill", "DENIED-BODY: the instructions still work.",
               "def never():\n    return 1\n")
    bad = skills / "broken"
    bad.mkdir(parents=True)
    (bad / "SKILL.md").write_text("no front matter here\n")
    with Rig(root) as r:
        yield r


def request_text(rig: Rig, i: int) -> str:
    return json.dumps(rig.requests[i].body)


def test_skills_are_listed_with_their_problems(rig: Rig) -> None:
    cell = rig.kernel.execute("%cave skills")
    assert cell.status == "ok", cell.all_text
    out = cell.stdout
    assert "row-check  [available]" in out and "denied-skill" in out
    assert "broken/SKILL.md: no YAML front matter" in out


def test_activation_discloses_the_body_once_and_loads_approved_code(rig: Rig) -> None:
    rows = "rows = [(1, 2), (3, None)]\n"
    rig.script(
        reply("", rows + "skills.activate('row-check')"),
        reply("", "print('bad rows:', validate(rows))\n"
                  "print(skills.read('row-check', 'reference.md'))"),
        reply("Row 2 is incomplete."),
    )
    widgets = Widgets()
    cell = rig.kernel.execute(
        "%%agent\ncheck the rows", on_message=clicker(widgets, "Approve once"), timeout=120
    )
    assert cell.status == "ok", cell.all_text
    first, second, third = (request_text(rig, i) for i in range(3))
    assert "row-check: Checks rows for row-check" in first  # listed: name and description
    assert "ROW-CHECK-BODY" not in first  # ... the body only after activation
    assert "ROW-CHECK-BODY" in second and "bound validate" in second
    assert "bad rows: [(3, None)]" in third and "reference of row-check" in third
    # The listing sits in the cached first system block, the same in every request.
    systems = [rig.requests[i].body["system"][0] for i in range(3)]
    assert systems[0] == systems[1] == systems[2] and "cache_control" in systems[0]
    # One approval: the code's path and hash were shown.
    (rid, _), = widgets.shown
    texts = "\n".join(cell.texts())
    assert "tool:skill:row-check@" in texts
    sha = __import__("hashlib").sha256(CODE.encode()).hexdigest()
    assert sha[:16] in texts and "injection.py" in texts
    listed = rig.kernel.execute("%cave skills").stdout
    assert "row-check  [active (code loaded)]" in listed


def test_an_unchanged_file_does_not_ask_again_a_changed_one_does(rig: Rig) -> None:
    rig.script(reply("", "skills.activate('row-check')"), reply("Already there."))
    widgets = Widgets()
    cell = rig.kernel.execute(
        "%%agent\nagain", on_message=clicker(widgets, "Deny"), timeout=120
    )
    assert cell.status == "ok", cell.all_text
    assert widgets.shown == []
    assert "already active" in request_text(rig, 1)

    code = rig.workspace / ".cave" / "skills" / "row-check" / "injection.py"
    code.write_text(CODE + "\nCHANGED = True\n")
    rig.script(reply("", "skills.activate('row-check')"), reply("Refused."))
    widgets = Widgets()
    cell = rig.kernel.execute(
        "%%agent\nonce more", on_message=clicker(widgets, "Deny"), timeout=120
    )
    assert cell.status == "ok", cell.all_text
    assert len(widgets.shown) == 1  # the hash changed: a person is asked again
    assert "NOT loaded" in request_text(rig, 1)
    probe = rig.kernel.execute("import cave; print('CHANGED' in cave.session().runtime.namespace)")
    assert probe.stdout.strip() == "False"


def test_a_denied_skill_keeps_its_instructions_without_its_code(rig: Rig) -> None:
    rig.script(
        reply("", "skills.activate('denied-skill')\nprint('never' in globals())"),
        reply("I follow the instructions by hand."),
    )
    cell = rig.kernel.execute(
        "%%agent\nuse it", on_message=clicker(Widgets(), "Deny"), timeout=120
    )
    assert cell.status == "ok", cell.all_text
    seen = request_text(rig, 1)
    assert "DENIED-BODY" in seen and "NOT loaded" in seen and "False" in seen


def test_declared_capabilities_are_granted_on_approval_but_never_past_deny(rig: Rig) -> None:
    outside = rig.outside
    skills = rig.workspace / ".cave" / "skills"
    make_skill(
        skills, "exporter", "Export with export(text).",
        f"def export(text):\n    return fs.write({str(outside / 'export.txt')!r}, text)\n",
        caps=f"fs.write:{outside}/** fs.write:{outside}/locked/**",
    )
    setup = rig.kernel.execute(
        f"%cave policy deny fs.write:{outside}/locked/**\n%cave skills refresh"
    )
    assert setup.status == "ok", setup.all_text
    rig.script(
        reply("", "skills.activate('exporter')\nprint(export('hi'))"),
        reply("Exported."),
    )
    widgets = Widgets()
    cell = rig.kernel.execute(
        "%%agent\nexport", on_message=clicker(widgets, "Approve once"), timeout=120
    )
    assert cell.status == "ok", cell.all_text
    assert len(widgets.shown) == 1  # the skill's approval; its write then did not ask
    assert (outside / "export.txt").read_text() == "hi"
    seen = request_text(rig, 1)
    assert f"not granted (a deny rule covers them): fs.write:{outside}/locked/**" in seen


def test_files_outside_the_scanned_skill_roots_are_read_under_the_policy(rig: Rig) -> None:
    outer = make_skill(rig.outside / "skills", "outer", "OUTER-BODY", None)
    (outer / "notes.md").write_text("outer notes")
    added = rig.kernel.execute(f"%cave skills add {outer}")
    assert added.status == "ok" and "Added outer" in added.stdout, added.all_text
    # Agent code that slips a directory into the registry object gets no free reads either.
    tamper = (
        "import cave, dataclasses, pathlib\n"
        "reg = cave.session().skills\n"
        f"reg.skills['evil'] = dataclasses.replace(reg.skills['outer'], "
        f"path=pathlib.Path({str(rig.outside)!r}))\n"
        "for name, path in [('outer', 'notes.md'), ('evil', 'skills/outer/notes.md')]:\n"
        "    try:\n        print(name, 'READ', skills.read(name, path))\n"
        "    except PermissionError as e:\n        print(name, 'refused')\n"
    )
    rig.script(reply("", tamper), reply("Both were refused."))
    widgets = Widgets()
    cell = rig.kernel.execute(
        "%%agent\nread them", on_message=clicker(widgets, "Deny", "Deny"), timeout=120
    )
    assert cell.status == "ok", cell.all_text
    out = json.dumps(rig.requests[1].body["messages"][-1])
    assert "outer refused" in out and "evil refused" in out and "READ" not in out
    assert len(widgets.shown) == 2  # each read was put to a person (fs.read outside: ask)
