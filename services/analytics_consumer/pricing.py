"""What a reply cost, from the per-model price table (USD per million tokens)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from services.analytics_consumer.settings import ModelPrice

_MILLION = Decimal(1_000_000)
# OpenAI pins snapshots with a date suffix: gpt-4o-2024-08-06, gpt-4.1-mini-2025-04-14.
_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$|-\d{4}$")


@dataclass(frozen=True)
class ReplyCost:
    usd: Decimal
    price_known: bool


class PriceTable:
    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = {name.lower(): price for name, price in prices.items()}

    def price_of(self, model: str) -> ModelPrice | None:
        name = model.lower()
        return self._prices.get(name) or self._prices.get(_SNAPSHOT_SUFFIX.sub("", name))

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> ReplyCost:
        """Unknown models cost 0 with `price_known=False`: a missing price is never an error."""
        price = self.price_of(model)
        if price is None:
            return ReplyCost(Decimal(0), price_known=False)
        usd = (
            Decimal(prompt_tokens) * price.input_per_million
            + Decimal(completion_tokens) * price.output_per_million
        ) / _MILLION
        return ReplyCost(usd.quantize(Decimal("0.00000001")), price_known=True)
