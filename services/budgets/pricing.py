"""The per-model price table (USD per million tokens) and what a reply costs.

One owner for two readers: the analytics consumer prices every reply it counts, and the ledger
reserves and settles cost budgets with the same prices (both processes read the setting
`CONVOAI_MODEL_PRICES` through `PricingSettings`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from shared.settings import ServiceSettings

_MILLION = Decimal(1_000_000)
SNAPSHOT_SUFFIX = r"-\d{4}-\d{2}-\d{2}$|-\d{4}$"
"""OpenAI pins snapshots with a date suffix (gpt-4o-2024-08-06, gpt-4.1-mini-2025-04-14): priced
as the model without it. The same pattern in Python and in PostgreSQL (see `as_sql_json`)."""
_SNAPSHOT_SUFFIX = re.compile(SNAPSHOT_SUFFIX)


class ModelPrice(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(frozen=True)

    input_per_million: Decimal = Field(ge=0)
    output_per_million: Decimal = Field(ge=0)


def _price(input_per_million: str, output_per_million: str) -> ModelPrice:
    return ModelPrice(
        input_per_million=Decimal(input_per_million),
        output_per_million=Decimal(output_per_million),
    )


DEFAULT_MODEL_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": _price("2.50", "10.00"),
    "gpt-4o-mini": _price("0.15", "0.60"),
    "gpt-4.1": _price("2.00", "8.00"),
    "gpt-4.1-mini": _price("0.40", "1.60"),
    "gpt-4.1-nano": _price("0.10", "0.40"),
    "gpt-4-turbo": _price("10.00", "30.00"),
    "gpt-3.5-turbo": _price("0.50", "1.50"),
    "o1": _price("15.00", "60.00"),
    "o3": _price("2.00", "8.00"),
    "o3-mini": _price("1.10", "4.40"),
    "o4-mini": _price("1.10", "4.40"),
    "gpt-5": _price("1.25", "10.00"),
    "gpt-5-mini": _price("0.25", "2.00"),
    "gpt-5-nano": _price("0.05", "0.40"),
}
"""List prices when this was written; override or extend with CONVOAI_MODEL_PRICES."""


class PricingSettings(ServiceSettings):
    """The price table's setting, shared by every process that prices replies."""

    model_prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description=(
            "JSON object model → {input_per_million, output_per_million} in USD; merged over "
            "the defaults. Unknown models cost 0 (flagged in analytics; free for cost budgets)."
        ),
    )

    def price_table(self) -> PriceTable:
        return PriceTable({**DEFAULT_MODEL_PRICES, **self.model_prices})


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

    def as_sql_json(self) -> str:
        """The table as a JSON parameter of a ledger statement, which prices the model it reads
        from the conversation: `{name: [input_per_million, output_per_million]}` (the statement
        strips `SNAPSHOT_SUFFIX` like `price_of`)."""
        return json.dumps(
            {
                name: [str(price.input_per_million), str(price.output_per_million)]
                for name, price in sorted(self._prices.items())
            }
        )
