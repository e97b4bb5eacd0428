"""Summarising compaction: summaries are updated not re-summarised, a breaker stops a failing
summariser, the prefix stays stable between steps, and estimates hold for CJK text."""

from __future__ import annotations

from typing import Any

import pytest

from cave.agent import _compaction
from cave.agent._compaction import (
    COOL_DOWN_S,
    FAILURES_TO_OPEN,
    SUMMARY_HEADER,
    Compactor,
    estimate_tokens,
    text_tokens,
)


def turn(n: int, output_chars: int = 4000) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "text", "text": f"make v{n}"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": f"t{n}", "name": "python",
                                           "input": {"code": f"v{n} = {n}"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{n}",
                                      "content": [{"type": "text", "text": "o" * output_chars}]}]},
        {"role": "assistant", "content": [{"type": "text", "text": f"v{n} made"}]},
    ]


class Summariser:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str | None, list[Any]]] = []
        self.fail = fail

    def __call__(self, previous: str | None, messages: Any) -> str:
        self.calls.append((previous, list(messages)))
        if self.fail:
            raise RuntimeError("summariser down")
        names = [b["input"]["code"].split(" =")[0] for m in messages for b in m["content"]
                 if b.get("type") == "tool_use"]
        return f"{previous + '; ' if previous else ''}made {', '.join(names)}"


def test_outputs_are_elided_before_anything_is_summarised() -> None:
    history = [m for n in range(4) for m in turn(n, 2000)]
    summarise = Summariser()
    sent, made = Compactor().history_for_request(history, 1800, summarise)
    assert made is not None and made.summarised_turns == 0 and not summarise.calls
    assert "elided" in str(sent[2]) and estimate_tokens(sent) <= 1800


def test_old_turns_become_a_summary_that_later_compactions_update() -> None:
    compactor, summarise = Compactor(), Summariser()
    history = [m for n in range(6) for m in turn(n, 8000)]
    sent, made = compactor.history_for_request(history, 4300, summarise)
    assert made is not None and made.summarised_turns >= 1
    assert summarise.calls[0][0] is None
    assert sent[0]["content"][0]["text"].startswith(SUMMARY_HEADER)
    assert "made v0" in sent[0]["content"][0]["text"]
    assert estimate_tokens(sent) <= 4300
    assert len(history) == 24  # the stored history is untouched
    history += [m for n in range(6, 12) for m in turn(n, 8000)]
    sent, made = compactor.history_for_request(history, 4300, summarise)
    assert made is not None and made.summarised_turns >= 1
    previous, folded = summarise.calls[-1]
    assert previous is not None and previous.startswith("made v0")  # an update of the summary
    assert "v0 = 0" not in str(folded)  # ...with only the turns since, never the old ones again
    assert "made v0" in sent[0]["content"][0]["text"]


def test_the_compacted_prefix_is_the_same_objects_from_step_to_step() -> None:
    compactor, summarise = Compactor(), Summariser()
    history = [m for n in range(6) for m in turn(n, 8000)]
    first, _ = compactor.history_for_request(history, 4300, summarise)
    history.append({"role": "assistant", "content": [{"type": "text", "text": "more"}]})
    second, made = compactor.history_for_request(history, 4300, summarise)
    assert made is None and len(summarise.calls) == 1
    assert second[: len(first)] == first  # byte-identical prefix: the prompt cache holds


def test_repeated_failures_open_the_breaker_until_the_cool_down_ends() -> None:
    now = [1000.0]
    compactor, failing = Compactor(clock=lambda: now[0]), Summariser(fail=True)
    history = [m for n in range(6) for m in turn(n, 8000)]
    for _ in range(FAILURES_TO_OPEN):
        sent, made = compactor.history_for_request(history, 4300, failing)
        assert "elided" in str(sent)  # the turn goes on with elided outputs
    assert compactor.breaker_open and len(failing.calls) == FAILURES_TO_OPEN
    assert made is not None and "paused" in made.note
    compactor.history_for_request(history, 4300, failing)
    assert len(failing.calls) == FAILURES_TO_OPEN  # open: not even tried
    now[0] += COOL_DOWN_S + 1
    working = Summariser()
    _, made = compactor.history_for_request(history, 4300, working)
    assert not compactor.breaker_open and working.calls and made is not None
    assert made.summarised_turns >= 1


def test_a_forced_compaction_summarises_all_but_the_last_turn() -> None:
    compactor, summarise = Compactor(), Summariser()
    history = [m for n in range(3) for m in turn(n, 100)]
    sent, made = compactor.history_for_request(history, 100_000, summarise, force=True)
    assert made is not None and made.summarised_turns == 2
    assert sent[0]["content"][1]["text"] == "make v2"


def test_a_reset_history_drops_the_summary() -> None:
    compactor, summarise = Compactor(), Summariser()
    history = [m for n in range(6) for m in turn(n, 8000)]
    compactor.history_for_request(history, 4300, summarise)
    fresh = turn(0, 10)
    sent, _ = compactor.history_for_request(fresh, 4300, summarise)
    assert sent == fresh and compactor.summary is None


@pytest.mark.parametrize("text,chars_per_token", [("数据分析的结果" * 500, 1.0),
                                                  ("한국어 데이터 분석" * 500, None)])
def test_dense_scripts_are_not_under_estimated(text: str, chars_per_token: float | None) -> None:
    # CJK runs about a token per character (often more); counting chars // 4 would
    # under-estimate by 4x and let a request pass the window.
    assert text_tokens(text) >= len(text.replace(" ", "")) * 0.9
    assert text_tokens("x = df.groupby('region').sum()\n" * 100) == pytest.approx(
        len("x = df.groupby('region').sum()\n") * 100 / _compaction.CHARS_PER_TOKEN, rel=0.01)


def test_calibration_follows_the_provider_counts() -> None:
    compactor = Compactor()
    compactor.observe(estimated=10_000, reported=13_000)
    assert compactor.scale == pytest.approx(1.3)
    compactor.observe(estimated=10_000, reported=100)  # absurd: clamped
    assert compactor.scale == 0.5


def test_a_provider_count_that_fits_saves_the_summary_call() -> None:
    compactor, summarise = Compactor(), Summariser()
    history = [m for n in range(6) for m in turn(n, 8000)]
    counted: list[int] = []

    def count(messages: list[Any]) -> int:  # the provider says: it fits
        counted.append(len(messages))
        return 4000

    sent, made = compactor.history_for_request(history, 4300, summarise, count=count)
    assert counted and not summarise.calls and compactor.scale < 1.0
    assert made is not None and made.summarised_turns == 0 and "elided" in str(sent)
    over, _ = Compactor().history_for_request(history, 4300, summarise, count=lambda m: 99_999)
    assert summarise.calls  # the provider says it does not fit: summarised


def test_cached_compaction_matches_an_uncached_one_and_its_caches_stay_bounded() -> None:
    """The per-message caches are an optimisation: each request equals what a compactor with
    empty caches (same summary) builds, and the caches hold only messages after the summary, so
    a step's cost and the memory do not grow with the stored history."""
    import random

    rng = random.Random(11)
    compactor, summarise = Compactor(), Summariser()
    history: list[dict[str, Any]] = []

    def no_summary(previous: str | None, messages: Any) -> str:
        raise AssertionError("the uncached twin needed a summary the cached one did not make")

    for n in range(150):
        history += turn(n, rng.choice([10, 500, 4000, 9000]))
        sent, _ = compactor.history_for_request(history, 6000, summarise)
        twin = Compactor()
        twin.summary, twin.covered = compactor.summary, compactor.covered
        assert twin.history_for_request(history, 6000, no_summary)[0] == sent
        live = len(history) - compactor.covered
        assert len(compactor._sizes) <= 3 * live + 2 and len(compactor._short) <= 2 * live + 2
    assert len(summarise.calls) >= 5
