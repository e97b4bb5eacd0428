"""Price table arithmetic."""

from __future__ import annotations

import pytest

from cave.models._pricing import PRICES, Price, TieredPrice, cost, price


def test_sonnet_5_5_arithmetic():
    # 1M uncached in at $2, 100k out at $10, 200k cache read at $0.10, 50k cache write at $2.50
    assert cost("claude-sonnet-5-5", 1_000_000, 100_000, 200_000, 50_000) == pytest.approx(
        2.0 + 1.0 + 0.02 + 0.125)


def test_each_token_kind_uses_its_own_rate():
    assert cost("claude-opus-4-8", 1_000_000, 0) == pytest.approx(5.0)
    assert cost("claude-opus-4-8", 0, 1_000_000) == pytest.approx(25.0)
    assert cost("claude-opus-4-8", 0, 0, cache_read=1_000_000) == pytest.approx(0.50)
    assert cost("claude-opus-4-8", 0, 0, cache_write=1_000_000) == pytest.approx(6.25)


def test_haiku_5_5_is_tiered_on_the_whole_prompt():
    small = cost("claude-haiku-5-5", 60_000, 1_000, cache_read=40_000)  # exactly 100k prompt
    large = cost("claude-haiku-5-5", 60_001, 1_000, cache_read=40_000)
    assert small == pytest.approx((60_000 * 0.10 + 1_000 * 0.50 + 40_000 * 0.01) / 1e6)
    assert large == pytest.approx((60_001 * 0.50 + 1_000 * 2.50 + 40_000 * 0.05) / 1e6)


def test_dated_ids_use_their_base_price_and_unknown_models_cost_none():
    assert price("claude-haiku-4-5-20251001") == price("claude-haiku-4-5") == Price(1, 5, 1.25, 0.1)
    assert cost("claude-sonnet-4-5-20250929", 1_000_000, 0) == pytest.approx(3.0)
    assert cost("gpt-7", 10, 10) is None
    assert cost("scripted", 10, 10) is None


def test_the_published_table():
    expected = {
        "claude-sonnet-5-5": (2, 10, 2.50, 0.10), "claude-opus-5-5": (4, 20, 5.00, 0.20),
        "claude-sonnet-5": (2, 10, 2.50, 0.20), "claude-opus-5": (5, 25, 6.25, 0.50),
        "claude-fable-5-1": (10, 50, 12.50, 0.25),
        **{f"claude-opus-4-{v}": (5, 25, 6.25, 0.50) for v in (8, 7, 6, 5)},
        "claude-sonnet-4-6": (3, 15, 3.75, 0.30), "claude-sonnet-4-5": (3, 15, 3.75, 0.30),
        "claude-haiku-4-5": (1, 5, 1.25, 0.10),
    }
    for model, prices in expected.items():
        assert PRICES[model] == Price(*prices), model
    haiku = PRICES["claude-haiku-5-5"]
    assert isinstance(haiku, TieredPrice) and haiku.threshold == 100_000
    assert haiku.small == Price(0.10, 0.50, 0.125, 0.01)
    assert haiku.large == Price(0.50, 2.50, 0.625, 0.05)
