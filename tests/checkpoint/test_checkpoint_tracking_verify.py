"""Trust, but verify: a write the tracker cannot see is caught by the re-hash after a save.

The unseen write here is real: the test writes the array, then re-protects its pages with a
``PAGEMAP_SCAN`` of its own, erasing the kernel's evidence (what the tracker's invariant trusts
no other code in the process to do). The tracker then vouches for a stale digest.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from _kernel_writes import reprotect_behind_the_trackers_back, reset_tracker
from test_checkpoint_write_tracking import needs_tracking

from cave._session import Session
from cave.checkpoint import SessionStore, _fingerprint, _write_tracking
from cave.checkpoint._session_io import save
from cave.checkpoint._verify_tracking import WriteTrackingOff
from cave.testing import ScriptedModel

SECRET = b"v" * 32


@pytest.fixture
def fresh_tracker():
    """A tracker of its own, so that turning it off here leaves the other tests a working one."""
    reset_tracker()
    yield
    reset_tracker()


def _unseen_write(arr: np.ndarray) -> int:
    """Change one element of ``arr`` where the tracker cannot see it; returns its index."""
    i = len(arr) // 3
    arr[i] = -42.0
    reprotect_behind_the_trackers_back(arr.ctypes.data, arr.nbytes)
    return i


@needs_tracking
def test_a_match_costs_one_hash_and_changes_nothing(tmp_path, fresh_tracker):
    store = SessionStore(tmp_path / "s", secret=SECRET)
    arr = np.random.default_rng(0).random((16 << 20) // 8)
    store.save("one", {"a": arr}, {})
    result = store.verifier.wait()
    assert result is not None and result.outcome == "match" and result.nbytes == arr.nbytes
    assert _write_tracking.tracker() is not None and _fingerprint.take_failure() is None


@needs_tracking
def test_an_unseen_change_turns_tracking_off_loudly_and_the_next_save_is_live(
    tmp_path, fresh_tracker
):
    store = SessionStore(tmp_path / "s", secret=SECRET, verify_every=2)
    arr = np.random.default_rng(1).random((16 << 20) // 8)
    ns = {"a": arr}
    store.save("one", ns, {})
    assert store.verifier.wait() is None  # every 2nd save only
    i = _unseen_write(arr)
    store.save("two", ns, {})  # the tracker vouches for the stale digest: this save is stale
    assert store.load("two").namespace["a"][i] != -42.0
    result = store.verifier.wait()
    assert result is not None and result.outcome == "mismatch"
    assert _write_tracking.tracker() is None
    assert "failed verification" in _write_tracking.unavailable

    with pytest.warns(WriteTrackingOff, match="turned off for this process"):
        store.save("three", ns, {})
    assert np.array_equal(store.load("three").namespace["a"], arr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.save("four", ns, {})  # said once


@needs_tracking
def test_a_check_that_races_a_write_is_inconclusive_not_a_failure(tmp_path, fresh_tracker):
    arr = np.random.default_rng(2).random((16 << 20) // 8)
    _fingerprint.buffer_digest(memoryview(arr).cast("B"))
    real = _fingerprint._hasher

    def hasher_that_writes():
        arr[len(arr) // 2] += 1.0  # a write while the check hashes: the tracker sees it
        return real()

    _fingerprint._hasher = hasher_that_writes
    try:
        assert _fingerprint.verify_one().outcome == "written"
    finally:
        _fingerprint._hasher = real
    assert _write_tracking.tracker() is not None


@needs_tracking
def test_a_session_prints_and_audits_tracking_off(tmp_path, monkeypatch, capsys, fresh_tracker):
    monkeypatch.setenv("CAVE_SESSION_DIR", str(tmp_path / "session"))
    monkeypatch.setenv("CAVE_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "ws").mkdir()
    session = Session(workspace=tmp_path / "ws", model=ScriptedModel([]))
    session.checkpoint_store = str(tmp_path / "store")
    session.ensure_security()
    try:
        arr = np.random.default_rng(3).random((16 << 20) // 8)
        session.runtime.inject("arr", arr, "data")
        save(session, "one", progress=False)
        from cave.checkpoint._session_store import open_store

        open_store(session).verifier.wait()
        _unseen_write(arr)
        save(session, "two", progress=False)
        assert open_store(session).verifier.wait().outcome == "mismatch"
        save(session, "three", progress=False)
        assert "write tracking was turned off" in capsys.readouterr().err
        lines = Path(session.audit.path).read_text().splitlines()
        kinds = [json.loads(line)["kind"] for line in lines]
        assert kinds.count("checkpoint.tracking_off") == 1
        assert kinds.index("checkpoint.tracking_off") < len(kinds) - 1  # before save "three"
    finally:
        session.security.close()  # its guard (audit hooks) must not outlive the test
