"""What a model call costs, in US dollars, from its token counts.

Published Anthropic list prices as of 2026-11, in USD per million tokens. Edit here when prices
change; nothing else in Cave knows a price. Cache writes are priced at the 5-minute TTL rate (1-hour
writes cost more and are not told apart by ``Usage``), so costs of 1-hour cache writes come out low.
Batch and priority-tier discounts are not modelled. An unknown model costs ``None``, not 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    """Writing the prompt cache, 5-minute TTL."""
    cache_read: float


@dataclass(frozen=True)
class TieredPrice:
    """A price that changes once a prompt (input + cache read + cache write) exceeds a size."""

    small: Price
    large: Price
    threshold: int
    """Prompts of up to this many tokens pay ``small``."""


_OPUS_4 = Price(5.0, 25.0, 6.25, 0.50)
_SONNET_4 = Price(3.0, 15.0, 3.75, 0.30)

PRICES: dict[str, Price | TieredPrice] = {
    "claude-sonnet-5-5": Price(2.0, 10.0, 2.50, 0.10),
    "claude-opus-5-5": Price(4.0, 20.0, 5.00, 0.20),
    "claude-haiku-5-5": TieredPrice(
        small=Price(0.10, 0.50, 0.125, 0.01),
        large=Price(0.50, 2.50, 0.625, 0.05),
        threshold=100_000,
    ),
    "claude-sonnet-5": Price(2.0, 10.0, 2.50, 0.20),
    "claude-opus-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-fable-5-1": Price(10.0, 50.0, 12.50, 0.25),
    "claude-opus-4-8": _OPUS_4,
    "claude-opus-4-7": _OPUS_4,
    "claude-opus-4-6": _OPUS_4,
    "claude-opus-4-5": _OPUS_4,
    "claude-sonnet-4-6": _SONNET_4,
    "claude-sonnet-4-5": _SONNET_4,
    "claude-haiku-4-5": Price(1.0, 5.0, 1.25, 0.10),
}

_DATED = re.compile(r"-20\d{6}$")


def price(model: str) -> Price | TieredPrice | None:
    """The price entry for ``model``; dated ids (``claude-haiku-4-5-20251001``) use their base."""
    return PRICES.get(model) or PRICES.get(_DATED.sub("", model))


def cost(
    model: str, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0
) -> float | None:
    """USD for one call, or None when the model's price is unknown."""
    entry = price(model)
    if entry is None:
        return None
    if isinstance(entry, TieredPrice):
        prompt = input_tokens + cache_read + cache_write
        entry = entry.small if prompt <= entry.threshold else entry.large
    return (
        input_tokens * entry.input
        + output_tokens * entry.output
        + cache_write * entry.cache_write
        + cache_read * entry.cache_read
    ) / 1_000_000
