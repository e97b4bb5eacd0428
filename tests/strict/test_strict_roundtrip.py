"""Strict mode through a real kernel: agent code runs in the confined worker, results come back.

The kernel's namespace stays what ``cave.retrieve`` reads; these tests check that what the agent
binds, rebinds and changes in place reaches it, and that large buffers are shared, not copied.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from strict_helpers import StrictKernel, Widgets, clicker, needs_strict

from cave.testing import reply

pytestmark = [pytest.mark.slow, needs_strict]


@pytest.fixture(scope="module")
def k(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictKernel]:
    with StrictKernel(tmp_path_factory.mktemp("strict-roundtrip")) as kernel:
        yield kernel


def test_x_equals_1_runs_in_another_process_and_comes_back(k: StrictKernel) -> None:
    k.script(reply("", "import os\nx = 1\nprint('worker pid', os.getpid())"), reply("Done."))
    cell = k.execute("%agent set x", timeout=90)
    assert cell.status == "ok", cell.all_text
    kernel_pid = k.value("__import__('os').getpid()")
    assert "worker pid" in cell.stdout and f"worker pid {kernel_pid}" not in cell.stdout
    assert k.value("cave.retrieve('x')") == "1"


def test_dataframe_filter_and_in_place_edits_reach_the_user(k: StrictKernel) -> None:
    setup = k.execute(
        "import numpy as np, pandas as pd, cave\n"
        "df = pd.DataFrame({'a': np.arange(200_000, dtype='f8'), 'b': np.arange(200_000)})\n"
        "items = [1, 2, 3]\n"
        "cave.inject('df', df, description='numbers')\n"
        "cave.inject('items', items)\n"
    )
    assert setup.status == "ok", setup.all_text
    k.script(
        reply("", "big = df[df.a >= 199_990]\nitems.append(4)\ndf.iloc[0, 0] = -1.0\n"
                  "print(len(big), float(df.iloc[0, 0]))"),
        reply("Filtered."),
    )
    cell = k.execute("%agent filter it", timeout=90)
    assert cell.status == "ok", cell.all_text
    assert "10 -1.0" in cell.stdout, cell.all_text
    assert k.value("cave.retrieve('big').shape") == "(10, 2)"
    assert k.value("cave.retrieve('big').a.min()") == "199990.0"
    # In place: the list is merged back into the user's own object; the frame's shared column
    # is the one cave.retrieve returns.
    assert k.value("items, cave.retrieve('items')") == "[1, 2, 3, 4] [1, 2, 3, 4]"
    assert k.value("cave.retrieve('df').iloc[0, 0]") == "-1.0"
    # The injected frame is shared memory now: the kernel's copy and the worker's are one.
    shared = k.value("cave.retrieve('df')._mgr.blocks[0].values.base is not None")
    assert shared == "True"


@pytest.mark.parametrize("edit", [False, True], ids=["unchanged", "edited-after-inject"])
def test_a_large_frame_is_copied_at_inject_and_the_agent_sees_it_as_at_the_step(
    k: StrictKernel, edit: bool
) -> None:
    """The large column is copied into shared memory when it is injected (``_precopy``); an edit
    the user makes before the first step throws that copy away, and the step sees the edit."""
    setup = k.execute(
        "import numpy as np, pandas as pd, cave\n"
        "wide = pd.DataFrame({'v': np.arange(4_000_000, dtype='f8')})\n"  # 32 MB: copied early
        "cave.inject('wide', wide)\n"
        "ex = cave.session().runtime.executor\n"
        "ex.regions.precopy.wait()\n"
        "print('early copies', ex.regions.precopy.pending())"
        + ("\nwide.iloc[123_456, 0] = -7.0" if edit else ""))
    assert setup.status == "ok", setup.all_text
    assert "early copies 1" in setup.stdout
    before = k.value("ex.regions.precopy.used, ex.regions.precopy.discarded")
    k.script(reply("", "print('sees', float(wide.v[123_456]))"), reply("ok"))
    assert k.execute("%agent look", timeout=90).status == "ok"
    assert ("sees -7.0" if edit else "sees 123456.0") in k.tool_results()
    used, discarded = (int(x) for x in before.split())
    after = k.value("ex.regions.precopy.used, ex.regions.precopy.discarded")
    assert after == (f"{used} {discarded + 1}" if edit else f"{used + 1} {discarded}")


def test_variables_persist_across_turns(k: StrictKernel) -> None:
    k.script(reply("", "counter = 41"), reply("Set."), reply("", "counter += 1\nprint(counter)"),
             reply("Now 42."))
    assert k.execute("%agent set a counter", timeout=90).status == "ok"
    second = k.execute("%agent add one", timeout=90)
    assert second.status == "ok", second.all_text
    assert "42" in second.stdout
    assert k.value("cave.retrieve('counter')") == "42"


def test_approved_write_outside_goes_through_the_broker(k: StrictKernel) -> None:
    target = k.outside / "approved.txt"
    k.script(reply("", f"with open({str(target)!r}, 'w') as f:\n    f.write('hello')\n"
                       "print('written')"), reply("Done."))
    widgets = Widgets()
    cell = k.execute("%agent write it", on_message=clicker(widgets, "Approve once"), timeout=90)
    assert cell.status == "ok", cell.all_text
    assert target.read_text() == "hello"
    assert len(widgets.shown) == 1
    assert f"fs.write:{target}" in "\n".join(cell.texts())
    assert "written" in k.tool_results()


def test_denied_write_raises_permission_error_in_agent_code(k: StrictKernel) -> None:
    target = k.outside / "denied.txt"
    k.script(reply("", f"try:\n    open({str(target)!r}, 'w')\nexcept PermissionError as e:\n"
                       "    print('refused:', type(e).__name__)"), reply("Not allowed."))
    cell = k.execute("%agent write it", on_message=clicker(Widgets(), "Deny"), timeout=90)
    assert cell.status == "ok", cell.all_text
    assert not target.exists()
    assert "refused: PermissionError" in k.tool_results()


def test_checkpoint_save_and_restore_reach_the_worker(k: StrictKernel) -> None:
    k.script(reply("", "saved_value = [1, 2]"), reply("ok"))
    assert k.execute("%agent set it", timeout=90).status == "ok"
    saved = k.execute("%checkpoint save before-change")
    assert saved.status == "ok", saved.all_text
    k.script(reply("", "saved_value.append(3)\nprint(saved_value)"), reply("ok"))
    assert "[1, 2, 3]" in k.execute("%agent change it", timeout=90).stdout
    listing = k.execute("%checkpoint list").stdout
    assert "before-change" in listing and "auto-" in listing  # auto-checkpoints after turns
    restored = k.execute("%checkpoint restore before-change")
    assert restored.status == "ok", restored.all_text
    # The restored namespace is what the next strict step sees.
    k.script(reply("", "print('now', saved_value)"), reply("ok"))
    assert "now [1, 2]" in k.execute("%agent look", timeout=90).stdout


def test_plain_python_reaches_workspace_files_through_the_broker(k: StrictKernel) -> None:
    (k.workspace / "data.csv").write_text("a,b\n1,2\n3,4\n")
    (k.workspace / "sub").mkdir(exist_ok=True)
    (k.workspace / "sub" / "note.txt").write_text("note")
    k.script(reply("", "import pandas as pd, pathlib, os\n"
                       "frame = pd.read_csv('data.csv')\n"
                       "print(frame.b.sum(), pathlib.Path('sub/note.txt').read_text(),\n"
                       "      sorted(os.listdir('sub')))\n"
                       "pathlib.Path('out.txt').write_text('from the worker')\n"
                       "frame"), reply("ok"))
    cell = k.execute("%agent read them", timeout=90)
    assert cell.status == "ok", cell.all_text
    assert "6 note ['note.txt']" in cell.stdout, cell.all_text
    assert (k.workspace / "out.txt").read_text() == "from the worker"
    assert k.value("cave.retrieve('frame').shape") == "(2, 2)"
    # The value is shown as text, never as HTML written by confined code.
    shown = [m["content"]["data"] for m in cell.of_type("display_data", "execute_result")
             if "0  1  2" in m["content"]["data"].get("text/plain", "")]
    assert shown and not any("text/html" in d for d in shown), shown


def test_approved_subprocess_runs_in_the_kernel_and_returns_its_output(k: StrictKernel) -> None:
    k.script(reply("", "import subprocess\n"
                       "done = subprocess.run(['echo', 'hello from a process'],\n"
                       "                      capture_output=True, text=True)\n"
                       "print(done.returncode, done.stdout.strip())"), reply("ok"))
    cell = k.execute("%agent run it", on_message=clicker(Widgets(), "Approve once"), timeout=90)
    assert cell.status == "ok", cell.all_text
    assert "0 hello from a process" in k.tool_results()
