"""The `knowledge.files` consumer: decode, index, acknowledge.

An event is acknowledged only once the file's outcome is stored, so a worker that dies
mid-extraction leaves it to be redelivered. A failure that is not the file's fault (database
or embeddings service down) returns it to the queue after a pause; the queue's delivery limit
then dead-letters a file that keeps failing.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from pydantic import ValidationError

from services.knowledge_worker.service import FileIndexer
from shared.events import FileUploaded, UnknownEventType, parse_event
from shared.topology import Topology

log = logging.getLogger(__name__)

REQUEUE_DELAY_S = 2.0


class FileConsumer:
    def __init__(
        self,
        amqp_url: str,
        topology: Topology,
        indexer: FileIndexer,
        *,
        concurrency: int,
        instance_id: str,
    ) -> None:
        self._amqp_url = amqp_url
        self._topology = topology
        self._indexer = indexer
        self._concurrency = concurrency
        self._instance_id = instance_id
        self._connection: AbstractRobustConnection | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self._amqp_url,
            client_properties={"connection_name": f"{self._instance_id}-files"},
        )
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self._concurrency)
        self._queue = await channel.get_queue(self._topology.knowledge_files.name, ensure=True)
        self._consumer_tag = await self._queue.consume(self._on_message)

    async def check_connected(self) -> None:
        if self._connection is None or not self._connection.connected.is_set():
            raise ConnectionError("file consumer not connected")

    async def stop(self, drain_timeout_s: float) -> None:
        if self._queue is not None and self._consumer_tag is not None:
            with suppress(Exception):
                await self._queue.cancel(self._consumer_tag)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=drain_timeout_s)
        if self._connection is not None:
            await self._connection.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._handle(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            event = parse_event(message.body)
        except (ValidationError, UnknownEventType, ValueError) as exc:
            log.warning("malformed file event dead-lettered", extra={"error": str(exc)[:200]})
            await _settle(message.reject(requeue=False))
            return
        if not isinstance(event, FileUploaded):
            await _settle(message.reject(requeue=False))
            return
        try:
            await self._indexer.index(event)
        except Exception:
            log.exception("indexing failed, file goes back", extra={"file": event.file_id})
            await asyncio.sleep(REQUEUE_DELAY_S)
            await _settle(message.nack(requeue=True))
            return
        await _settle(message.ack())


async def _settle(operation: object) -> None:
    try:
        await operation  # type: ignore[misc]
    except Exception as exc:
        log.warning("could not settle a file event", extra={"error": repr(exc)})
