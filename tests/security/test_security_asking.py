"""The decision engine while it asks: the interrupt window and the policy's ask timeouts."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from security_helpers import BlockingChannel, ListSink

from cave.security._capabilities import Capability
from cave.security._engine import SessionAuthority
from cave.security._policy import Policy


def _authority(tmp_path: Path, channel: object, **kwargs: object) -> SessionAuthority:
    ws = Path(os.path.realpath(tmp_path))
    return SessionAuthority(
        workspace=ws, policy=Policy.default(ws), channel=channel, audit=ListSink(), **kwargs
    )


def test_an_interrupt_right_after_the_helper_thread_starts_cancels_its_request(
    tmp_path: Path,
) -> None:
    """The stop button can land between starting the channel's thread and waiting for it."""
    channel = BlockingChannel()

    def start_then_interrupted(fn: Callable[[], None]) -> None:
        threading.Thread(target=fn, daemon=True).start()
        raise KeyboardInterrupt

    authority = _authority(tmp_path, channel, start_thread=start_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        authority.authorize(Capability("fs.read", "/etc/hostname"), origin="t", summary="read")
    assert channel.saw_cancel.wait(5), "the channel was left waiting for a person"
    assert authority.cancel_pending() == 0
