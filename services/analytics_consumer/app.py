"""Composition root of the analytics consumer: dashboard API and the `analytics.events` consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.analytics_consumer import api
from services.analytics_consumer.handlers import ConsumerConfig, EventConsumer
from services.analytics_consumer.ingest import EventIngestor
from services.analytics_consumer.pricing import PriceTable
from services.analytics_consumer.settings import AnalyticsSettings
from shared.runtime import ServiceRuntime
from shared.security import TokenVerifier
from shared.service_app import create_service_app

SERVICE = "analytics_consumer"


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    settings = settings or AnalyticsSettings()
    runtime = ServiceRuntime.build(SERVICE, settings)
    prices = PriceTable(settings.price_table())
    topology = runtime.topology
    consumer = EventConsumer(
        ConsumerConfig(
            amqp_url=settings.amqp_url,
            queue=topology.analytics_events.name,
            dead_letter_queue=topology.dead_letter_queue(topology.analytics_events).name,
            prefetch=settings.consumer_prefetch,
            batch_max_events=settings.batch_max_events,
            batch_window_s=settings.batch_window_ms / 1000,
            max_backoff_s=settings.db_retry_max_backoff_s,
            monitor_interval_s=settings.queue_monitor_interval_s,
        ),
        runtime.sessions,
        EventIngestor(prices),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The runtime declares the topology first, so the queue exists before we consume it.
        await runtime.start()
        runtime.run_in_background(consumer.write_forever(), "analytics-writer")
        runtime.run_in_background(consumer.consume_forever(), "analytics-consumer")
        runtime.run_in_background(consumer.monitor_forever(), "analytics-queue-monitor")
        await consumer.wait_connected(settings.broker_connect_timeout_s)
        yield
        await runtime.stop()

    return create_service_app(
        title="ConvoAI analytics",
        runtime=runtime,
        lifespan=lifespan,
        state={
            "consumer": consumer,
            "prices": prices,
            "token_verifier": TokenVerifier.from_settings(settings),
        },
        readiness={"consumer": consumer.check_connected},
        routers=[api.public, api.readers],
    )
