from pydantic import Field

from services.budgets.pricing import PricingSettings


class AnalyticsSettings(PricingSettings):
    """Settings of the analytics consumer and dashboard API (env prefix CONVOAI_)."""

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
