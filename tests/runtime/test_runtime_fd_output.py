"""Output written to fds 1 and 2 below Python reaches the model, and the fds come back intact.

In-process tests drive a real ``Executor`` (real pipes, a real child process, libc ``printf``
through ctypes); the last test runs an agent step in a real Cave kernel whose ipykernel watches
fds 1/2 itself, and checks the model's next request and the cell.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cave.runtime._executor import ExecutionResult, Executor, interrupt_thread

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc/self/fd")


def make() -> Executor:
    return Executor({"__name__": "__cave_agent__"})


def run(code: str, executor: Executor | None = None, **kwargs: Any) -> ExecutionResult:
    kwargs.setdefault("echo", False)
    return (executor or make()).run(code, **kwargs)


def fd_identity() -> list[tuple[str, int, int]]:
    """What fds 1 and 2 point at: the link target and the (device, inode) pair."""
    out = []
    for fd in (1, 2):
        st = os.fstat(fd)
        out.append((os.readlink(f"/proc/self/fd/{fd}"), st.st_dev, st.st_ino))
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settle_fds(target: int, timeout: float = 5.0) -> int:
    """The pump closes a pipe's read end when it sees end of file: give it a moment."""
    deadline = time.monotonic() + timeout
    n = open_fds()
    while n > target and time.monotonic() < deadline:
        time.sleep(0.01)
        n = open_fds()
    return n


# ------------------------------------------------------------------ what reaches the model


def test_os_write_to_fd1_and_fd2_reaches_the_output() -> None:
    r = run("import os\nos.write(1, b'to fd one\\n')\nos.write(2, b'to fd two\\n')")
    assert r.error is None
    assert "to fd one\n" in r.output and "to fd two\n" in r.output
    assert r.output_chars == len(r.output)


_PRINTF_SCRIPT = r"""
import ctypes, json, pathlib, sys, threading
from cave.approvals import AutoDenyChannel
from cave.runtime import _fd_capture
from cave.runtime._executor import Executor
from cave.security import AuditLog, Policy, Security

printf = ctypes.CDLL(None).printf  # looked up here, outside agent code
code = "import os\nprintf(b'buffered in libc\\n')\nos.write(1, b'raw\\n')"
results = {}

ws = pathlib.Path(sys.argv[1]) / "ws"
ws.mkdir()
security = Security(workspace=ws, policy=Policy.default(ws), channel=AutoDenyChannel(),
                    audit=AuditLog(ws / ".cave" / "audit.jsonl"))
ex = Executor({"__name__": "a", "printf": printf})
def worker():
    with security.agent_code():
        results["guarded"] = ex.run(code, echo=False).output
thread = threading.Thread(target=worker)
thread.start()
thread.join(30)  # first: the guarded step is the process's first step

results["plain"] = Executor({"__name__": "a", "printf": printf}).run(code, echo=False).output
flush, _fd_capture._fflush_fn = _fd_capture._fflush_fn, False  # the control: no fflush
results["control"] = ex.run(code, echo=False).output
_fd_capture._fflush_fn = flush
sys.stderr.write(json.dumps(results))
"""


def test_c_printf_is_flushed_and_captured_also_inside_the_guard(tmp_path: Any) -> None:
    # printf to a pipe is block-buffered in libc, so it needs the fflush at the step's end. Agent
    # code runs inside Security.agent_code(), where the guard refuses ctypes symbol lookups: fflush
    # must have been looked up before (Executor.__init__). A subprocess, because PYTHONUNBUFFERED
    # (set in some CI and shells) makes C stdio unbuffered for the whole process.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", _PRINTF_SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    results = json.loads(proc.stderr)
    # Block-buffered: the printf line arrives with the fflush at the step's end, after "raw".
    assert results["plain"] == "raw\nbuffered in libc\n"
    assert results["guarded"] == "raw\nbuffered in libc\n"
    assert results["control"] == "raw\n"  # without fflush libc keeps it: the check above can fail


def test_child_process_output_is_captured() -> None:
    r = run("import subprocess\nsubprocess.run(['echo', 'hi from child'], check=True)")
    assert r.error is None, r.error
    assert "hi from child\n" in r.output


def test_order_within_a_descriptor_and_python_prints_kept() -> None:
    code = "import os\nfor i in range(200):\n    os.write(1, b'line %d\\n' % i)\nprint('py')"
    r = run(code)
    lines = [ln for ln in r.output.splitlines() if ln.startswith("line ")]
    assert lines == [f"line {i}" for i in range(200)]
    assert "py\n" in r.output


def test_python_prints_and_fd_writes_keep_their_order() -> None:
    # Without the sync before each printed line the fd output would trail every print.
    code = (
        "import os\nprint('a')\nos.write(1, b'b\\n')\nprint('c')\n"
        "os.write(2, b'd\\n')\nprint('e')"
    )
    ex = make()
    outputs = {run(code, ex).output for _ in range(50)}
    assert outputs == {"a\nb\nc\nd\ne\n"}


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    r = run("import os\nos.write(1, b'bad \\xff byte\\n')")
    assert r.error is None
    assert "bad \ufffd byte\n" in r.output


def test_huge_fd_output_stays_bounded_like_prints() -> None:
    ex = Executor({"__name__": "__cave_agent__"}, head_chars=1000, tail_chars=1000)
    code = (
        "import os\nchunk = b'x' * 1023 + b'\\n'\n"
        "for _ in range(10 * 1024):\n    os.write(1, chunk)\nos.write(1, b'THE END\\n')"
    )
    r = run(code, ex)
    assert r.error is None, r.error
    assert r.output_chars == 10 * 1024 * 1024 + len("THE END\n")
    assert len(r.output) < 2100 + 100
    assert "characters omitted" in r.output
    assert r.output.endswith("THE END\n")


def test_echo_reaches_the_original_stream_once() -> None:
    # The TeeStream's original is a StringIO (no descriptor): fd output is echoed there once.
    notebook = io.StringIO()
    old = sys.stdout
    sys.stdout = notebook
    try:
        r = make().run("import os\nos.write(1, b'shown once\\n')", echo=True)
    finally:
        sys.stdout = old
    assert "shown once\n" in r.output
    assert notebook.getvalue().count("shown once") == 1


class _Recording(io.StringIO):
    """A stream of a type the pump does not trust: records which threads wrote to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[int] = set()

    def write(self, s: str) -> int:
        self.writers.add(threading.get_ident())
        return super().write(s)


def test_pump_never_calls_a_stream_agent_code_chose() -> None:
    # The pump is a kernel thread outside the guard: an echo target of an unknown type is written
    # only by the step's own thread (at the step's end), never by the pump.
    notebook = _Recording()
    old = sys.stdout
    sys.stdout = notebook
    box: list[ExecutionResult] = []
    code = (
        "import os, time\nfor i in range(50):\n"
        "    os.write(1, b'slow %d\\n' % i)\n    time.sleep(0.002)"
    )
    thread = threading.Thread(target=lambda: box.append(make().run(code, echo=True)))
    try:
        thread.start()
        thread.join(30)
    finally:
        sys.stdout = old
    assert box and box[0].error is None
    expected = "".join(f"slow {i}\n" for i in range(50))
    assert box[0].output == expected
    assert notebook.getvalue() == expected  # echoed once, in order
    assert notebook.writers == {thread.ident}


# ------------------------------------------------------------------ the fds come back


def test_fds_restored_after_error_timeout_and_interrupt() -> None:
    before = fd_identity()
    ex = make()
    r = run("import os\nos.write(1, b'before error\\n')\n1/0", ex)
    assert "before error" in r.output and "ZeroDivisionError" in (r.error or "")
    assert fd_identity() == before

    r = run("import os, time\nos.write(2, b'slow\\n')\nwhile True:\n    time.sleep(0.01)", ex,
            timeout=0.3)
    assert r.timed_out and "slow\n" in r.output
    assert fd_identity() == before

    box: list[ExecutionResult] = []
    code = "import os, time\nos.write(1, b'waiting\\n')\nwhile True:\n    time.sleep(0.01)"
    thread = threading.Thread(target=lambda: box.append(run(code, ex)))
    thread.start()
    deadline = time.monotonic() + 10
    while ex.thread_id is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.1)
    assert ex.thread_id is not None and interrupt_thread(ex.thread_id)
    thread.join(10)
    assert box and box[0].interrupted and "waiting\n" in box[0].output
    assert fd_identity() == before
    # And fd 1 works for code outside steps again: a write lands where it did before.
    assert os.write(1, b"") == 0


_CLOSED_FD_SCRIPT = r"""
import json, os, sys
from cave.runtime._executor import Executor
os.close(1)  # no fd 1 at all: that descriptor is left alone, fd 2 is still captured
ex = Executor({"__name__": "a"})
r = ex.run("import os\nos.write(2, b'two\\n')\nprint('py')", echo=False)
try:
    os.fstat(1)
    fd1 = "open"
except OSError:
    fd1 = "closed"
with open(sys.argv[1], "w") as f:
    json.dump({"output": r.output, "error": r.error, "fd1": fd1}, f)
"""


def test_a_closed_fd_1_is_left_alone_and_fd_2_still_captured(tmp_path: Any) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-c", _CLOSED_FD_SCRIPT, str(out)],
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result = json.loads(out.read_text())
    assert result == {"output": "two\npy\n", "error": None, "fd1": "closed"}


def test_nested_run_output_reaches_both_captures() -> None:
    outer = make()
    inner = make()
    outer.namespace["inner"] = inner
    code = (
        "import os\nos.write(1, b'outer before\\n')\n"
        "r = inner.run(\"import os\\nos.write(1, b'inner fd\\\\n')\", echo=True)\n"
        "os.write(1, b'outer after\\n')\n"
        "r.output"
    )
    r = run(code, outer)
    assert r.error is None, r.error
    assert r.value_repr is not None and "inner fd" in r.value_repr
    assert "outer before\n" in r.output and "inner fd\n" in r.output
    assert r.output.index("outer before") < r.output.index("inner fd")
    assert "outer after\n" in r.output


def test_nested_run_under_the_real_stdout_does_not_feed_its_own_pipe() -> None:
    # The outer step points sys.stdout at the process's own fd-1 stream, whose descriptor is then
    # our pipe: the inner run must not echo into the pipe it reads (an endless loop).
    outer = make()
    outer.namespace["inner"] = make()
    code = (
        "import io, os, sys\n"
        "sys.stdout = io.TextIOWrapper(io.FileIO(1, 'w', closefd=False), write_through=True)\n"
        "r = inner.run(\"import os\\nos.write(1, b'inner once\\\\n')\", echo=True)\n"
        "r.output"
    )
    r = run(code, outer, timeout=20)
    assert r.error is None and not r.timed_out, r.error
    assert r.value_repr == repr("inner once\n")
    assert r.output.count("inner once") <= 1


def test_child_that_outlives_the_step_does_not_hold_it() -> None:
    before = fd_identity()
    ex = make()
    start = time.monotonic()
    r = run(
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', "
        "'import time; print(\"early\", flush=True); time.sleep(1.5); print(\"late\")'])\n"
        "time.sleep(0.5)\n",
        ex,
    )
    try:
        assert time.monotonic() - start < 1.4  # the step did not wait for the child
        assert "early\n" in r.output and "late" not in r.output
        assert fd_identity() == before
    finally:
        ex.namespace["p"].wait(10)


def test_thousand_steps_do_not_leak_descriptors() -> None:
    ex = make()
    run("x = 0", ex)
    time.sleep(0.1)
    baseline = open_fds()
    for _ in range(1000):
        r = ex.run("import os\nos.write(1, b'.')\nx += 1", echo=False)
        assert r.output == "."
    assert ex.namespace["x"] == 1000
    assert settle_fds(baseline) <= baseline


# ------------------------------------------------------------------ a real Cave kernel


@pytest.fixture(scope="module")
def cave() -> Iterator[Any]:
    from cave.testing._scripted_kernel import ScriptedKernel

    # ipykernel skips watching fds 1/2 when PYTEST_CURRENT_TEST is set, and the kernel inherits
    # our environment: hide it while the kernel starts, so the kernel behaves as in a notebook.
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        scripted = ScriptedKernel().start()
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved
    try:
        yield scripted
    finally:
        scripted.stop()


def tool_result_text(body: dict[str, Any]) -> str:
    """The text of the tool results in a request's last message."""
    texts: list[str] = []
    for block in body["messages"][-1]["content"]:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            content = block.get("content")
            texts.append(content if isinstance(content, str) else json.dumps(content))
    assert texts, body["messages"][-1]
    return "\n".join(texts)


@pytest.mark.slow
def test_agent_step_fd_output_reaches_model_and_cell_once(cave: Any) -> None:
    from cave.testing._script import reply

    # The kernel's own fd watcher works before the agent step...
    before = cave.execute("import os\nos.write(1, b'plain cell before\\n')")
    assert before.status == "ok", before.all_text
    deadline = time.monotonic() + 5
    text = before.stdout
    while "plain cell before" not in text and time.monotonic() < deadline:
        # ipykernel's watcher thread may publish just after the reply: pick it up in a no-op cell.
        text += cave.execute("pass").stdout
    assert "plain cell before" in text, "ipykernel is not watching fd 1 in the test kernel"

    # The text is assembled at run time, so finding it in the request means the step's output,
    # not the code the model sent, reached the model.
    code = (
        "import os\nos.write(1, b'from ' + b'fd\\n')\nos.write(2, b'fd ' + b'two\\n')\n"
        "print('py' + 'thon')"
    )
    cave.script(reply("", code), reply("Done."))
    cell = cave.execute("%%agent\nwrite to the descriptors", timeout=120)
    assert cell.status == "ok", cell.all_text
    assert len(cave.requests) == 2
    result = tool_result_text(cave.requests[1].body)
    assert "from fd" in result and "fd two" in result and "python" in result, result
    assert cell.stdout.count("from fd") == 1, cell.stdout
    assert cell.stderr.count("fd two") == 1, cell.stderr

    # ...and after it: ipykernel's watcher is still alive and still owns fd 1.
    after = cave.execute("import os\nos.write(1, b'plain cell after\\n')")
    assert after.status == "ok", after.all_text
    text = after.stdout
    deadline = time.monotonic() + 5
    while "plain cell after" not in text and time.monotonic() < deadline:
        text += cave.execute("pass").stdout
    assert "plain cell after" in text


def test_fileno_names_the_captured_descriptor_so_subprocess_and_faulthandler_work() -> None:
    r = run(
        "import subprocess, sys, faulthandler\n"
        "print(sys.stdout.fileno(), sys.stderr.fileno())\n"
        "subprocess.run([sys.executable, '-c', 'print(\"child-out\")'], stdout=sys.stdout)\n"
        "faulthandler.dump_traceback(file=sys.stderr)\n"
    )
    assert r.error is None, r.error
    assert "1 2" in r.output
    assert "child-out" in r.output
    assert "Current thread" in r.output or "Thread 0x" in r.output
