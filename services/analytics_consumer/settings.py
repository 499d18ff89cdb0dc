from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from shared.settings import ServiceSettings


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


class AnalyticsSettings(ServiceSettings):
    """Settings of the analytics consumer and dashboard API (env prefix CONVOAI_)."""

    model_prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description=(
            "JSON object model → {input_per_million, output_per_million} in USD; merged over "
            "the defaults. Unknown models cost 0 and are flagged."
        ),
    )
    consumer_prefetch: int = Field(
        default=3000,
        ge=1,
        le=20_000,
        description=(
            "Unacknowledged events held at once; several batches' worth, so RabbitMQ keeps "
            "delivering while a batch commits."
        ),
    )
    batch_max_events: int = Field(
        default=500, ge=1, le=5000, description="Events written in one transaction at most."
    )
    batch_window_ms: float = Field(
        default=250.0,
        ge=0,
        le=10_000,
        description=(
            "How long a batch waits to fill up. Dashboards lag by at most this; each batch "
            "costs a transaction, so at moderate load a longer window means far less CPU "
            "(measured: 1.5 → 0.8 ms of analytics CPU per chat turn going from 50 to 250 ms)."
        ),
    )
    db_retry_max_backoff_s: float = Field(
        default=5.0, gt=0, le=300, description="Longest pause between retries in a DB outage."
    )
    queue_monitor_interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="How often queue depths are recorded."
    )

    def price_table(self) -> dict[str, ModelPrice]:
        return {**DEFAULT_MODEL_PRICES, **self.model_prices}
