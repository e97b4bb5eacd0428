"""Issue 9 through a real agent turn: the auto-checkpoint after a turn that edits an array and
rebinds an earlier agent variable to a slice of it stores the edit (real agent loop, scripted
model, real store)."""

from __future__ import annotations

import numpy as np
from test_checkpoint_session_io import closing, places  # noqa: F401 - `places` is a fixture
from test_checkpoint_write_tracking import needs_tracking

from cave.checkpoint._autocheckpoint import enable_autocheckpoint
from cave.checkpoint._session_store import open_store
from cave.testing import reply


@needs_tracking
def test_an_agent_turn_that_edits_and_slices_is_checkpointed_live(places, monkeypatch):  # noqa: F811
    a_place, _ = places
    session = a_place.session(
        monkeypatch,
        reply("", "part = None"), reply("made part"),
        reply("", "n = 1"), reply("nothing to A"),
        reply("", "A[5_000_000] = -1.0\npart = A[4_000_000:6_000_000]"), reply("edited"),
    )  # fmt: skip
    try:
        enable_autocheckpoint(session)
        session.ask("make part", echo=False)  # `part` is bound before `A`
        session.runtime.inject("A", np.arange(8 << 20, dtype=np.float64), "64 MiB")
        session.ask("leave A alone", echo=False)  # A saved twice now: tracked and trusted
        session.ask("edit A and slice it", echo=False)
        store = open_store(session)
        names = [i.name for i in store.list()]
        restored = store.load(names[-1]).namespace
        assert restored["A"][5_000_000] == -1.0
        assert restored["part"][1_000_000] == -1.0
    finally:
        closing([session])
