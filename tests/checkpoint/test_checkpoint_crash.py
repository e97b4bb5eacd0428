"""Crash consistency: `kill -9` a process at random moments while it saves, 100 times.

After every kill the store must verify, and its newest committed checkpoint must restore with
exactly the values that checkpoint recorded; no committed checkpoint may ever disappear.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cave.checkpoint import SessionStore

SECRET_HEX = "c7" * 32
TRIALS = 100

CHILD = textwrap.dedent(
    """
    import random, sys
    import numpy as np
    from cave.checkpoint import SessionStore

    store = SessionStore(sys.argv[1], secret=bytes.fromhex(sys.argv[2]))
    rng = random.Random(int(sys.argv[3]))
    names = [f"a{i:02d}" for i in range(24)]
    marks = {n: 0.0 for n in names}
    ns = {n: np.zeros(32_768) for n in names}  # 24 blobs of 256 KiB
    ns["meta"] = {"note": "x" * 1000}
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    k = 0
    while True:
        k += 1
        for n in rng.sample(names, 6):  # change a quarter of the objects each time
            marks[n] = rng.random()
            ns[n][:] = marks[n]
        store.save(None, ns, {"marks": marks, "k": k})
    """
)


def check(store: SessionStore) -> tuple[str, int] | None:
    report = store.verify()
    assert report.ok, report.failed
    infos = store.list()
    if not infos:
        return None
    newest = infos[-1]
    restored = store.load(newest.name)
    assert restored.problems == []
    for name, mark in restored.state["marks"].items():
        arr = restored.namespace[name]
        assert arr.shape == (32_768,) and np.all(arr == mark), name
    return newest.name, newest.seq


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_during_saves_never_corrupts_the_store(tmp_path):
    root = tmp_path / "store"
    store = SessionStore(root, secret=bytes.fromhex(SECRET_HEX))
    rng = random.Random(20240601)
    committed: list[str] = []
    kills_mid_write = 0
    for trial in range(TRIALS):
        temp_before = set((root / "blobs" / "tmp").iterdir()) if root.exists() else set()
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), SECRET_HEX, str(trial)],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
        if set((root / "blobs" / "tmp").iterdir()) - temp_before:
            kills_mid_write += 1  # the kill landed while a blob was being written

        newest = check(store)
        names = [i.name for i in store.list()]
        for name in committed:  # nothing committed before this kill was lost
            assert name in names
        if newest is not None:
            committed = [newest[0]]
        if trial % 10 == 9:  # keep the store small; gc after crashes must keep it valid
            for name in names[:-2]:
                store.remove(name)
            store.gc()
            committed = [n for n in committed if n in names[-2:]]
            check(store)

    assert store.list(), "no save ever committed: the kills came too early to test anything"
    assert kills_mid_write >= 10, f"only {kills_mid_write} kills hit a blob write"
