"""Consumer cost benchmark: CPU per delivered message for each way of reading a queue.

Fills a throwaway queue on the local RabbitMQ, drains it with each consumer style in turn
(several rounds, interleaved, so load from other processes hits all of them alike) and reports
the consuming process's CPU time per message (`time.process_time`, insensitive to how busy the
machine is) and the delivery rate:
- `aiormq`: aiormq's own `basic_consume` (what `shared.queue_consumer` wraps);
- `aio_pika`: aio-pika's `Queue.consume` (an `IncomingMessage` and an extra task per delivery);
- `queue_consumer`: `shared.queue_consumer.QueueConsumer`.
Acks are `multiple` every 500 deliveries, as the analytics consumer does. Prints one JSON object.

    .venv/bin/python bench/queue_consumer_cost.py [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

import aio_pika
import aiormq
import aiormq.abc

from shared.queue_consumer import QueueConsumer

AMQP_URL = os.environ.get("CONVOAI_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PREFETCH = 3000
ACK_EVERY = 500
BODY = json.dumps({"event_id": "0" * 36, "type": "message.sent", "padding": "x" * 300}).encode()


async def fill(queue: str, count: int) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        declared = await channel.declare_queue(queue, durable=True)
        for _ in range(count):
            await channel.default_exchange.publish(aio_pika.Message(BODY), routing_key=queue)
        while declared.declaration_result.message_count < count:
            await asyncio.sleep(0.05)
            declared = await channel.declare_queue(queue, passive=True)


class Counter:
    def __init__(self, total: int) -> None:
        self.total, self.seen, self.done = total, 0, asyncio.Event()

    def count(self) -> bool:
        """Count one delivery; True when it is time for a `multiple` ack."""
        self.seen += 1
        if self.seen >= self.total:
            self.done.set()
        return self.seen % ACK_EVERY == 0 or self.seen >= self.total


async def with_aiormq(queue: str, counter: Counter) -> Callable[[], Awaitable[None]]:
    connection = await aiormq.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.basic_qos(prefetch_count=PREFETCH)

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        if counter.count():
            await channel.basic_ack(message.delivery_tag, multiple=True)

    await channel.basic_consume(queue, on_message)
    return connection.close


async def with_aio_pika(queue: str, counter: Counter) -> Callable[[], Awaitable[None]]:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if counter.count():
            await message.ack(multiple=True)

    await (await channel.get_queue(queue)).consume(on_message)
    return connection.close


async def with_queue_consumer(queue: str, counter: Counter) -> Callable[[], Awaitable[None]]:
    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        if counter.count():
            await message.channel.basic_ack(message.delivery_tag, multiple=True)

    consumer = QueueConsumer(
        AMQP_URL, queue, on_message, prefetch=PREFETCH, connection_name="bench"
    )
    await consumer.start()
    return consumer.stop


STYLES = {"aiormq": with_aiormq, "aio_pika": with_aio_pika, "queue_consumer": with_queue_consumer}


async def drain(style: str, queue: str, count: int) -> tuple[float, float]:
    counter = Counter(count)
    wall, cpu = time.perf_counter(), time.process_time()
    stop = await STYLES[style](queue, counter)
    await counter.done.wait()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await stop()
    return cpu / count * 1e6, count / wall


async def main(args: argparse.Namespace) -> dict[str, object]:
    queue = f"bench-consumer-cost.{secrets.token_hex(4)}"
    runs: dict[str, list[tuple[float, float]]] = {style: [] for style in STYLES}
    try:
        for _ in range(args.rounds):
            for style in STYLES:
                await fill(queue, args.messages)
                runs[style].append(await drain(style, queue, args.messages))
    finally:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            await (await connection.channel()).queue_delete(queue)
    return {
        "messages": args.messages,
        "rounds": args.rounds,
        **{
            style: {
                "cpu_us_per_message_median": round(statistics.median(c for c, _ in r), 1),
                "messages_per_s_median": round(statistics.median(m for _, m in r)),
            }
            for style, r in runs.items()
        },
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages per drain")
    parser.add_argument("--rounds", type=int, default=3, help="drains per consumer style")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
