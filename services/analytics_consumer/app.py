"""Composition root of the analytics consumer: dashboard API and the `analytics.events` consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.analytics_consumer import api, daily_api, key_usage
from services.analytics_consumer.handlers import ConsumerConfig, EventConsumer
from services.analytics_consumer.ingest import EventIngestor
from services.analytics_consumer.settings import AnalyticsSettings
from shared.revocations import MAX_ACCESS_TOKEN_AGE_S, RevocationFeed, RevocationList
from shared.runtime import ServiceRuntime
from shared.security import TokenVerifier
from shared.service_app import create_service_app

SERVICE = "analytics_consumer"


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    settings = settings or AnalyticsSettings()
    runtime = ServiceRuntime.build(SERVICE, settings)
    prices = settings.price_table()
    topology = runtime.topology
    # A deactivated or demoted admin's token stops reading and writing analytics at once.
    revocations = RevocationList(MAX_ACCESS_TOKEN_AGE_S)
    revocation_feed = RevocationFeed(
        settings.amqp_url, topology, revocations, history_s=MAX_ACCESS_TOKEN_AGE_S
    )
    consumer = EventConsumer(
        ConsumerConfig(
            queue=topology.analytics_events.name,
            dead_letter_queue=topology.dead_letter_queue(topology.analytics_events).name,
            prefetch=settings.consumer_prefetch,
            batch_max_events=settings.batch_max_events,
            batch_window_s=settings.batch_window_ms / 1000,
            max_backoff_s=settings.db_retry_max_backoff_s,
            monitor_interval_s=settings.queue_monitor_interval_s,
        ),
        runtime,
        EventIngestor(prices),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.run_in_background(consumer.write_forever(), "analytics-writer")
        runtime.run_in_background(consumer.monitor_forever(), "analytics-queue-monitor")
        # Declares the topology, then attaches the consumer to the queue it made sure exists.
        await runtime.start()
        await revocation_feed.start()
        yield
        await revocation_feed.stop()
        # Detaches the consumer first: unacknowledged deliveries go back to the queue, and
        # event ids keep a redelivery harmless.
        await runtime.stop()

    return create_service_app(
        title="ConvoAI analytics",
        runtime=runtime,
        lifespan=lifespan,
        state={
            "consumer": consumer,
            "prices": prices,
            "token_verifier": TokenVerifier.from_settings(settings, revocations),
        },
        readiness={"consumer": consumer.check_connected, "revocations": revocation_feed.check},
        routers=[api.public, api.readers, daily_api.readers, key_usage.readers, key_usage.own],
    )
