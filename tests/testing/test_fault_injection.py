"""The loopback servers' injected faults, as the official ``anthropic`` and ``openai`` SDKs see
them: the fixtures must look like the real failures to real clients, or the recovery tests built
on them (tests/agent/test_faults.py) would prove nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from cave.testing._anthropic_server import AnthropicServer
from cave.testing._openai_server import OpenAIServer
from cave.testing._script import Failure, Reply, reply

HI = [{"role": "user", "content": "hi"}]
LONG = "word " * 40


def anthropic_events(server: AnthropicServer, **client: Any) -> Iterator[Any]:
    c = anthropic.Anthropic(api_key="k", base_url=server.base_url, **client)
    try:
        with c.messages.stream(model="m", max_tokens=50, messages=HI) as stream:
            yield from stream
    finally:
        c.close()


def openai_chunks(server: OpenAIServer, **client: Any) -> Iterator[Any]:
    c = openai.OpenAI(api_key="k", base_url=server.base_url, **client)
    try:
        yield from c.chat.completions.create(model="m", messages=HI, stream=True)
    finally:
        c.close()


def test_429_retry_after_is_honoured_by_both_sdks() -> None:
    for server_class, read in ((AnthropicServer, anthropic_events), (OpenAIServer, openai_chunks)):
        with server_class([Failure(429, "rate_limit_error", "slow", retry_after=1),
                           reply("ok")]) as server:
            t0 = time.monotonic()
            events = list(read(server, max_retries=1))
            assert time.monotonic() - t0 >= 1.0 and events
            assert server.requests[0].path == server.requests[1].path
            assert len(server.requests) == 2


def test_a_reset_before_the_reply_is_retried_by_both_sdks() -> None:
    for server_class, read in ((AnthropicServer, anthropic_events), (OpenAIServer, openai_chunks)):
        with server_class([Failure(0, reset=True), reply("ok")]) as server:
            assert list(read(server, max_retries=1))
            assert len(server.requests) == 2


def test_a_reset_mid_stream_breaks_the_stream_for_both_sdks() -> None:
    for server_class, read in ((AnthropicServer, anthropic_events), (OpenAIServer, openai_chunks)):
        with server_class([Reply(text=LONG, fault="reset", fault_after=2)]) as server:
            got: list[Any] = []
            with pytest.raises(Exception) as err:  # noqa: B017 - each SDK raises its own type
                for event in read(server, max_retries=0):
                    got.append(event)
            assert got, "the stream had started"
            assert "connect" in type(err.value).__name__.lower() or "Protocol" in type(
                err.value).__name__ or "Read" in type(err.value).__name__, repr(err.value)


def test_a_truncated_stream_ends_without_its_final_event() -> None:
    with AnthropicServer([Reply(text=LONG, fault="truncate", fault_after=2)]) as server:
        kinds = [e.type for e in anthropic_events(server, max_retries=0)]
        assert "content_block_delta" in kinds and "message_stop" not in kinds
    with OpenAIServer([Reply(text=LONG, fault="truncate", fault_after=2)]) as server:
        chunks = list(openai_chunks(server, max_retries=0))
        assert chunks and all(c.choices[0].finish_reason is None for c in chunks if c.choices)


def test_a_stalled_stream_trips_a_read_timeout_in_both_sdks() -> None:
    for server_class, read in ((AnthropicServer, anthropic_events), (OpenAIServer, openai_chunks)):
        with server_class([Reply(text=LONG, fault="stall", fault_after=2, stall_s=60)]) as server:
            t0 = time.monotonic()
            timeout = (anthropic.Timeout(30, read=1.0) if server_class is AnthropicServer
                       else openai.Timeout(30, read=1.0))
            with pytest.raises(Exception) as err:  # noqa: B017 - each SDK raises its own type
                list(read(server, max_retries=0, timeout=timeout))
            assert "Timeout" in type(err.value).__name__ or "timed out" in str(err.value).lower()
            assert time.monotonic() - t0 < 30  # the read timeout, not the 60 s stall


def test_a_context_window_is_enforced_with_the_apis_message() -> None:
    with AnthropicServer([reply("never")], context_window=10) as server:
        c = anthropic.Anthropic(api_key="k", base_url=server.base_url, max_retries=0)
        with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
            c.messages.create(model="m", max_tokens=5, messages=[
                {"role": "user", "content": "x" * 400}])
        c.close()


def test_an_empty_assistant_message_is_refused_like_the_api_does() -> None:
    with AnthropicServer([reply("never")]) as server:
        c = anthropic.Anthropic(api_key="k", base_url=server.base_url, max_retries=0)
        with pytest.raises(anthropic.BadRequestError, match="non-empty content"):
            c.messages.create(model="m", max_tokens=5, messages=[
                {"role": "user", "content": "a"}, {"role": "assistant", "content": []},
                {"role": "user", "content": "b"}])
        c.close()
