"""StreamRelay on its own: a worker thread relayed to the caller's thread, errors, and a cancel
that wakes a worker blocked reading a real httpx stream from a real socket."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from cave._errors import ModelResponseError, TurnInterrupted
from cave.models._streaming import StreamingCall, StreamRelay, wake_reader

NAME = "cave-test-stream"


@pytest.fixture(autouse=True)
def no_worker_left():
    yield
    deadline = time.monotonic() + 3.0
    while any(t.name == NAME for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == NAME for t in threading.enumerate())


def test_text_is_relayed_in_the_callers_thread_and_done_builds_the_result():
    seen: list[tuple[str, int]] = []

    def work(call: StreamingCall) -> None:
        assert threading.current_thread().name == NAME
        for piece in ("a", "b", "c"):
            call.events.put(("text", piece))
        call.events.put(("done", 42))

    relay = StreamRelay(NAME)
    out = relay.run(work, lambda t: seen.append((t, threading.get_ident())), lambda v: v + 1)
    assert out == 43
    assert seen == [(p, threading.get_ident()) for p in "abc"]
    assert relay.run(work, None, str) == "42"  # no sink: the text is dropped


def test_worker_errors_are_raised_as_they_are_or_translated_with_the_cause():
    def work(call: StreamingCall) -> None:
        raise OSError("wire cut")

    relay = StreamRelay(NAME)
    with pytest.raises(OSError, match="wire cut") as plain:
        relay.run(work, None, str)
    assert plain.value.__cause__ is None

    def translate(exc: BaseException) -> BaseException:
        return ModelResponseError(None, "connection_error", str(exc))

    with pytest.raises(ModelResponseError) as translated:
        relay.run(work, None, str, translate)
    assert translated.value.detail == "wire cut"
    assert isinstance(translated.value.__cause__, OSError)


class _Stream:
    """The shape ``StreamingCall.attach`` takes: ``.response`` and ``close()``."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def close(self) -> None:
        self.response.close()


def test_cancel_wakes_a_worker_blocked_on_a_real_socket():
    import httpx

    release = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:  # headers, one chunk, then silence until released
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
            release.wait(10)

    server = threading.Thread(target=serve)
    server.start()
    client = httpx.Client()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    ended: list[float] = []

    def work(call: StreamingCall) -> None:
        try:
            with client.stream("GET", url) as resp:
                if not call.attach(_Stream(resp)):
                    return
                for chunk in resp.iter_text():
                    call.events.put(("text", chunk))
        finally:
            ended.append(time.perf_counter())

    relay = StreamRelay(NAME)
    chunks: list[str] = []
    cancelled_at: list[float] = []
    first = threading.Event()

    def cancel() -> None:  # once "hi" has arrived: the server is then silent for 10 s
        if first.wait(30):
            cancelled_at.append(time.perf_counter())
            relay.cancel()

    def on_text(text: str) -> None:
        chunks.append(text)
        first.set()

    timer = threading.Thread(target=cancel)
    timer.start()
    try:
        with pytest.raises(TurnInterrupted) as err:
            relay.run(work, on_text, str)
        returned = time.perf_counter()
        deadline = time.monotonic() + 8.0
        while not ended and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        timer.join()
        release.set()
        server.join(5)
        listener.close()
        client.close()
    assert err.value.step == 0 and chunks == ["hi"]
    assert returned - cancelled_at[0] < 8.0  # not the server's 10 s silence
    assert ended and ended[0] - cancelled_at[0] < 8.0
    relay.cancel()  # nothing in flight: a no-op


def test_wake_reader_closes_a_stream_without_a_socket():
    closed: list[bool] = []

    class NoSocket:
        response = None

        def close(self) -> None:
            closed.append(True)

    wake_reader(NoSocket())
    assert closed == [True]
