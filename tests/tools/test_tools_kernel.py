"""Tools through real Cave kernels over ZMQ, with the loopback Anthropic server.

An agent turn registers a tool (approved by a click on the widget's button, as JupyterLab sends
it), then runs it on the rows of an injected DataFrame. The session is checkpointed and restored
in a fresh kernel, where the tool works again without being registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cave.testing import (
    CLICK,
    ApprovalWidgets,
    KernelHarness,
    ScriptedServer,
    reply,
)

pytestmark = pytest.mark.slow


TOOL = """
/** Check records: each needs a name and a positive amount. */
export async function run(args: { rows: Array<{ name: string; amount: number }> }) {
  const errors: string[] = [];
  let valid = 0;
  args.rows.forEach((r, i) => {
    if (!r.name) errors.push(`row ${i}: empty name`);
    else if (!(r.amount > 0)) errors.push(`row ${i}: amount must be positive`);
    else valid++;
  });
  return { valid, errors };
}
"""
FRAME = "pd.DataFrame({'name': ['a', '', 'c'], 'amount': [1.0, 2.0, -3.0]})"
EXPECTED = "{'valid': 1, 'errors': ['row 1: empty name', 'row 2: amount must be positive']}"


Model = ScriptedServer  # one server for every kernel of the module


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    m = Model()
    try:
        yield m
    finally:
        m.server.stop()


def kernel(root: Path, name: str, model: Model) -> KernelHarness:
    workspace = root / name / "ws"
    workspace.mkdir(parents=True, exist_ok=True)
    env = {
        **model.env(),
        "CAVE_CONFIG_DIR": str(root / "config"),
        "CAVE_SESSION_DIR": str(root / name / "session"),
        "CAVE_CHECKPOINTS": str(root / "store"),
    }
    return KernelHarness(env=env, cwd=workspace).start()


def ok(k: KernelHarness, code: str, **kwargs: Any) -> Any:
    cell = k.execute(code, timeout=120, **kwargs)
    assert cell.status == "ok", cell.all_text
    return cell


class Clicker(ApprovalWidgets):
    """Clicks "Approve once" on each approval widget that appears, and keeps its text."""

    def __call__(self, msg: dict[str, Any], k: KernelHarness) -> None:
        self.see(msg)
        for rid, model_id in self.shown:
            if rid not in self.clicked:
                self.clicked.add(rid)
                k.comm_msg(self.button(model_id, "Approve once"), CLICK)

    def __init__(self) -> None:
        super().__init__()
        self.clicked: set[str] = set()


def test_agent_registers_a_tool_by_approval_uses_it_and_it_survives_a_checkpoint(
    tmp_path: Path, model: Model
) -> None:
    step = (
        f"src = {TOOL!r}\n"
        "print(tools.register('check_rows', src, [], 'validate sales records'))\n"
        "report = tools.check_rows(rows=df.to_dict('records'))\n"
        "print(report)\n"
    )
    with kernel(tmp_path, "a", model) as k:
        ok(k, f"import cave, pandas as pd\ncave.inject('df', {FRAME}, description='records')")
        model.replies = [reply("Registering a checker.", step), reply("1 of 3 rows is valid.")]
        clicker = Clicker()
        cell = ok(k, "%%agent\nvalidate df's rows with a TypeScript tool", on_message=clicker)
        assert len(clicker.texts) == 1
        shown = clicker.texts[0]
        assert "tool:check_rows" in shown and "source (typescript, in full):" in shown
        assert "errors.push(`row ${i}: empty name`)" in shown
        sent_back = str(model.server.requests[-1].body["messages"][-1])
        assert "check_rows(rows: Array<{ name: string; amount: number }>)" in sent_back
        assert EXPECTED in sent_back, sent_back
        assert "1 of 3 rows is valid." in "\n".join(cell.texts("text/markdown"))
        assert ok(k, "print(cave.retrieve('report'))").stdout.strip() == EXPECTED
        system = str(model.server.requests[-1].body["system"])
        assert "tools.check_rows(rows: Array<{ name: string; amount: number }>)" in system
        ok(k, "%checkpoint save with-tool")

    with kernel(tmp_path, "b", model) as k2:
        assert "Restored checkpoint 'with-tool'" in ok(k2, "%checkpoint restore with-tool").stdout
        again = ok(k2, "import cave\nprint(cave.tools.call('check_rows', rows=[{'name': 'x', "
                       "'amount': 2}]))")
        assert again.stdout.strip() == "{'valid': 1, 'errors': []}"
        model.replies = [
            reply("", "print(tools.check_rows(rows=df.to_dict('records')))"),
            reply("Same result after the restore."),
        ]
        cell = ok(k2, "%%agent\ncheck df again")
        assert not [m for m in cell.messages if "[cave] approval" in str(m["content"])]
        assert EXPECTED in str(model.server.requests[-1].body["messages"][-1])


def test_the_stop_button_cancels_a_tool_called_from_a_user_cell(
    tmp_path: Path, model: Model
) -> None:
    spin = (
        "export async function run() { console.log('spinning'); while (true) {} }"
    )
    with kernel(tmp_path, "c", model) as k:
        ok(k, f"import cave\ncave.tools.register('spin', {spin!r})\n"
              "cave.tools.register('plus', 'export async function run(a: {x: number}) "
              "{ return a.x + 1; }')")

        def stop_when_spinning(msg: dict[str, Any], kh: KernelHarness) -> None:
            if msg["msg_type"] == "stream" and "spinning" in msg["content"]["text"]:
                kh.interrupt()  # the tool is running in Deno: its output reached the cell

        cell = k.execute("cave.tools.call('spin')", timeout=120, on_message=stop_when_spinning)
        assert cell.status == "error" and cell.error["ename"] == "KeyboardInterrupt"
        assert ok(k, "print(cave.tools.call('plus', x=1))").stdout.strip() == "2"
        outcome = ok(k, "import json\nprint([json.loads(l).get('outcome') for l in "
                        "open(cave.session().audit.path) if 'tool.call' in l])").stdout
        assert "'stopped'" in outcome
