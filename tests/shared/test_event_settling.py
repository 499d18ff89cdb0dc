"""`settle_each_event` without a broker: which deliveries are acknowledged, requeued or
dead-lettered, and that the service sees the redelivery flag."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from shared.events import FileUploaded, MessageSent
from shared.queue_consumer import Disposition, settle_each_event


@dataclass
class FakeChannel:
    """Records how each delivery tag was settled; `broken` fails as a closed channel does."""

    settled: list[tuple[str, int]] = field(default_factory=list)
    broken: bool = False

    async def _record(self, how: str, tag: int) -> None:
        if self.broken:
            raise RuntimeError("channel closed")
        self.settled.append((how, tag))

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        await self._record("ack", tag)

    async def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        await self._record("requeue" if requeue else "nack", tag)

    async def basic_reject(self, tag: int, *, requeue: bool = True) -> None:
        await self._record("requeue" if requeue else "dead-letter", tag)


def delivery(body: bytes, channel: FakeChannel, *, tag: int = 7, redelivered: bool = False) -> Any:
    return DeliveredMessage(
        delivery=spec.Basic.Deliver(
            consumer_tag="c", delivery_tag=tag, redelivered=redelivered, routing_key="q"
        ),
        header=ContentHeader(properties=spec.Basic.Properties()),
        body=body,
        channel=channel,  # type: ignore[arg-type]
    )


def message_sent() -> MessageSent:
    return MessageSent(producer="test", conversation_id="c1", message_id="m1")


class Service:
    """Answers `disposition` (or raises `error`) and records what it was given."""

    def __init__(self, disposition: Disposition = Disposition.ACK, error: bool = False) -> None:
        self.disposition = disposition
        self.error = error
        self.seen: list[tuple[MessageSent, bool]] = []

    async def __call__(self, event: MessageSent, *, redelivered: bool) -> Disposition:
        self.seen.append((event, redelivered))
        if self.error:
            raise RuntimeError("database down")
        return self.disposition


def handler_for(service: Service) -> Any:
    return settle_each_event(MessageSent, service, what="chat request", requeue_delay_s=0)


async def test_a_handled_event_is_acknowledged_and_the_service_sees_the_redelivery() -> None:
    service, channel = Service(), FakeChannel()
    event = message_sent()
    await handler_for(service)(
        delivery(event.model_dump_json().encode(), channel, redelivered=True)
    )
    assert service.seen == [(event, True)]
    assert channel.settled == [("ack", 7)]


async def test_an_event_the_service_could_not_handle_goes_back_to_the_queue() -> None:
    service, channel = Service(Disposition.REQUEUE), FakeChannel()
    await handler_for(service)(delivery(message_sent().model_dump_json().encode(), channel))
    assert [redelivered for _, redelivered in service.seen] == [False]
    assert channel.settled == [("requeue", 7)]


async def test_a_service_that_raises_requeues_instead_of_stopping_the_consumer(caplog) -> None:
    service, channel = Service(error=True), FakeChannel()
    with caplog.at_level(logging.ERROR, logger="shared.queue_consumer"):
        await handler_for(service)(delivery(message_sent().model_dump_json().encode(), channel))
    assert channel.settled == [("requeue", 7)]
    assert "chat request failed, back to the queue" in caplog.text


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"type": "message.sent"}', b'{"type": "no.such.event"}'],
    ids=["not-json", "not-an-object", "missing-fields", "unknown-type"],
)
async def test_a_delivery_that_is_not_an_event_is_dead_lettered_at_once(caplog, body) -> None:
    service, channel = Service(), FakeChannel()
    with caplog.at_level(logging.WARNING, logger="shared.queue_consumer"):
        await handler_for(service)(delivery(body, channel))
    assert service.seen == []
    assert channel.settled == [("dead-letter", 7)]
    assert "malformed chat request dead-lettered" in caplog.text


async def test_another_kind_of_event_is_dead_lettered_without_a_malformed_warning(caplog) -> None:
    service, channel = Service(), FakeChannel()
    other = FileUploaded(
        producer="test",
        file_id="f",
        assistant_id="a",
        name="n",
        content_type="text/plain",
        size_bytes=1,
    )
    with caplog.at_level(logging.WARNING, logger="shared.queue_consumer"):
        await handler_for(service)(delivery(other.model_dump_json().encode(), channel))
    assert service.seen == []
    assert channel.settled == [("dead-letter", 7)]
    assert "malformed" not in caplog.text


async def test_a_settlement_on_a_closed_channel_is_logged_not_raised(caplog) -> None:
    service, channel = Service(), FakeChannel(broken=True)
    with caplog.at_level(logging.WARNING, logger="shared.queue_consumer"):
        await handler_for(service)(delivery(message_sent().model_dump_json().encode(), channel))
    assert len(service.seen) == 1
    assert "could not settle a chat request" in caplog.text
