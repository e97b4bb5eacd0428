"""A checkpoint round trip through a fresh kernel, with an active skill and a sub-agent that
holds state: its namespace, conversation and policy come back, and it goes on working."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "approvals"))
from test_approvals_kernel import Rig, Widgets, clicker  # noqa: E402

from cave.testing import reply  # noqa: E402

pytestmark = pytest.mark.slow


def ok(rig: Rig, code: str) -> str:
    cell = rig.kernel.execute(code, timeout=120)
    assert cell.status == "ok", cell.all_text
    return cell.stdout


def test_an_active_skill_and_a_sub_agent_come_back_in_a_fresh_kernel(tmp_path: Path) -> None:
    skill = tmp_path / "workspace" / ".cave" / "skills" / "summer"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text(
        "---\nname: summer\ndescription: Adds numbers. Use for totals.\n---\nSUMMER-BODY\n"
    )
    (skill / "injection.py").write_text("def add_all(xs):\n    return sum(xs)\n")

    with Rig(tmp_path) as a:
        ok(a, "import cave\nkeeper = cave.Agent('keeper', policy=['fs.read:**'], "
              "instructions='Keep the books.')\nkeeper.inject('numbers', [1, 2, 3], 'the numbers')")
        a.script(reply("", "skills.activate('summer')\nprint(add_all([1, 2]))"), reply("3."))
        cell = a.kernel.execute(
            "%%agent\nadd", on_message=clicker(Widgets(), "Approve for this session"), timeout=120
        )
        assert cell.status == "ok", cell.all_text
        a.script(reply("", "total = sum(numbers)\nprint(total)"), reply("The total is 6."))
        assert "The total is 6." in ok(a, "print(await keeper.ask_async('total them'))")
        assert "Saved checkpoint 'books'" in ok(a, "%checkpoint save books")

    with Rig(tmp_path) as b:
        restored = ok(b, "%checkpoint restore books")
        assert "Restored checkpoint 'books'" in restored, restored
        ok(
            b,
            "import cave\ns = cave.session()\nk = s.subagents.get('keeper')\n"
            "assert k.retrieve('total') == 6 and k.retrieve('numbers') == [1, 2, 3]\n"
            "assert k.runtime.injected['numbers'].description == 'the numbers'\n"
            "assert k.policy.fallback.value == 'deny' and k.instructions == 'Keep the books.'\n"
            "assert len(k.history) == 4\n"
            "assert s.skills.active == ['summer'] and 'summer' in s.skills.loaded\n"
            "assert cave.retrieve('add_all')([4, 5]) == 9\n"
            "keeper = k",
        )
        # It goes on with its own conversation, and its policy still holds.
        b.script(
            reply("", "print(total * 2)\ntry:\n    fs.write('x.txt', 'no')\n"
                      "except PermissionError:\n    print('refused')"),
            reply("Twelve."),
        )
        assert "Twelve." in ok(b, "print(await keeper.ask_async('double it'))")
        messages = b.requests[0].body["messages"]
        assert "total them" in json.dumps(messages[0]) and "double it" in json.dumps(messages)
        assert "12" in json.dumps(b.requests[1].body["messages"][-1])
        assert "refused" in json.dumps(b.requests[1].body["messages"][-1])
        assert not (tmp_path / "workspace" / "x.txt").exists()
        # The skill's code was approved for this hash: activating again asks nobody.
        b.script(reply("", "skills.activate('summer')"), reply("ok"))
        widgets = Widgets()
        cell = b.kernel.execute("%%agent\nagain", on_message=clicker(widgets, "Deny"),
                                timeout=120)
        assert cell.status == "ok", cell.all_text
        assert widgets.shown == []
