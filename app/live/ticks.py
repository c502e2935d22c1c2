"""Simulated price ticks: a random walk per symbol."""

from __future__ import annotations

import random
from collections.abc import Iterator

from django.utils import timezone


def ticks(symbols: list[str], seed: int | None = None) -> Iterator[dict]:
    rng = random.Random(seed)
    prices = {symbol: round(rng.uniform(20, 200), 2) for symbol in symbols}
    while True:
        symbol = rng.choice(symbols)
        prices[symbol] = max(0.01, round(prices[symbol] * (1 + rng.gauss(0, 0.002)), 2))
        yield {"symbol": symbol, "price": prices[symbol], "ts": timezone.now().isoformat()}


def event(update: dict) -> dict:
    return {"type": "live.tick", "update": update}
