"""Revoked access, as every token-accepting service other than auth knows it (README).

Auth publishes `user.deactivated`, `user.role_changed`, `user.deleted` and
`user.sessions_revoked` through its outbox. Each means: access tokens of that user issued
before the event's `occurred_at` are void. A process keeps that as one number per user
(`RevocationList`) and checks every token against it; it forgets a user once every token
issued before the cut-off has expired anyway. The stream also carries `api_key.revoked`: a
gateway forgets what it cached about that key (services/gateway/api_keys.py).

The events reach every process through a RabbitMQ *stream* (`<ns>.revocations`, bound to those
routing keys, kept for longer than any token lives), read by `RevocationFeed`:
- a process that starts reads the last `history_s` of it, so it knows revocations made before
  it existed;
- a process whose connection drops resumes after the last offset it read, so it misses nothing
  that was published meanwhile;
- "caught up" is proved, not assumed: after (re)connecting the feed appends a probe of its own
  to the stream and reads up to it. Until then `check` raises `RevocationStateBehind` and
  tokens are not accepted (REST waits briefly, then answers 503).
While the broker itself is down nothing new can be revoked anywhere (auth's outbox holds the
events until it is back), so a disconnected process keeps checking against what it knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aio_pika.abc

from shared.events import (
    ACCESS_REVOKING_EVENTS,
    ApiKeyRevoked,
    Event,
    UnknownEventType,
    parse_event,
)
from shared.security import Principal, RevocationStateBehind, RevokedToken
from shared.topology import Topology

log = logging.getLogger(__name__)

MAX_ACCESS_TOKEN_AGE_S = 24 * 3600 + 300
"""The longest an access token lives (auth allows a TTL up to 24 h), plus clock leeway."""
PROBE_TYPE = "revocations.probe"
STREAM_MAX_AGE = "26h"
"""Longer than the longest access token (24 h) plus the history a starting process reads."""
RECONNECT_DELAY_S = 1.0
PREFETCH = 200

RevocationListener = Callable[[Event], Awaitable[None] | None]
KeyRevocationListener = Callable[[ApiKeyRevoked], None]


class RevocationList:
    """user id → the instant before which that user's access tokens are void."""

    def __init__(self, max_token_age_s: float, clock: Callable[[], float] = time.time) -> None:
        self._max_token_age_s = max_token_age_s
        self._clock = clock
        self._cutoffs: dict[str, float] = {}
        self._current = asyncio.Event()

    @property
    def current(self) -> bool:
        return self._current.is_set()

    def mark_current(self) -> None:
        self._current.set()

    def mark_behind(self) -> None:
        self._current.clear()

    async def wait_current(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._current.wait(), timeout_s)
        return self.current

    def revoke(self, user_id: str, before: float) -> None:
        if before > self._cutoffs.get(user_id, 0.0):
            self._cutoffs[user_id] = before
        self._forget_expired()

    def revoked_before(self, user_id: str) -> float | None:
        return self._cutoffs.get(user_id)

    def check(self, principal: Principal) -> None:
        if not self.current:
            raise RevocationStateBehind()
        cutoff = self._cutoffs.get(principal.user_id)
        if cutoff is not None and principal.issued_at < cutoff:
            raise RevokedToken("access revoked after this token was issued")

    def _forget_expired(self) -> None:
        # Amortised: a cut-off older than any live token can no longer refuse anything.
        if len(self._cutoffs) % 256:
            return
        oldest_live = self._clock() - self._max_token_age_s
        self._cutoffs = {u: t for u, t in self._cutoffs.items() if t > oldest_live}


class RevocationFeed:
    """Reads `<ns>.revocations` into a `RevocationList` and tells listeners (close sockets,
    remove a deleted user's data) about each revoking event."""

    def __init__(
        self,
        amqp_url: str,
        topology: Topology,
        revocations: RevocationList,
        *,
        history_s: float,
    ) -> None:
        self._amqp_url = amqp_url
        self._topology = topology
        self._revocations = revocations
        self._history_s = history_s
        self._listeners: list[RevocationListener] = []
        self._key_listeners: list[KeyRevocationListener] = []
        self._next_offset: int | None = None
        self._probe: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self.connected = False

    def add_listener(self, listener: RevocationListener) -> None:
        """Told of each event that voids a user's access tokens."""
        self._listeners.append(listener)

    def add_key_listener(self, listener: KeyRevocationListener) -> None:
        """Told of each revoked API key (a gateway forgets what it cached about the key)."""
        self._key_listeners.append(listener)

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start reading; return once caught up (or after `timeout_s`, still trying)."""
        self._task = asyncio.create_task(self._run_forever(), name="revocation-feed")
        if not await self._revocations.wait_current(timeout_s):
            log.warning("revocation feed not caught up at start-up; tokens wait until it is")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def check(self) -> None:
        """Readiness: the state is caught up with the stream."""
        if not self._revocations.current:
            raise ConnectionError("revocation feed catching up")

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._read_until_disconnected()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revocation feed disconnected, retrying", extra={"error": repr(exc)})
            self.connected = False
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def _read_until_disconnected(self) -> None:
        connection = await aio_pika.connect(self._amqp_url)
        self._connection = connection
        closed = asyncio.Event()
        connection.close_callbacks.add(lambda *_: closed.set())
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            stream = await declare_revocation_stream(channel, self._topology)
            self._revocations.mark_behind()
            offset: Any = self._next_offset
            if offset is None:
                offset = datetime.now(UTC) - timedelta(seconds=self._history_s)
            await stream.consume(self._on_message, arguments={"x-stream-offset": offset})
            self._probe = secrets.token_urlsafe(12)
            await channel.default_exchange.publish(
                aio_pika.Message(json.dumps({"type": PROBE_TYPE, "probe": self._probe}).encode()),
                routing_key=stream.name,
            )
            self.connected = True
            await closed.wait()
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                await connection.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        offset = (message.headers or {}).get("x-stream-offset")
        try:
            await self._apply(message.body)
        finally:
            if isinstance(offset, int):
                self._next_offset = offset + 1
            await message.ack()

    async def _apply(self, body: bytes) -> None:
        try:
            data = json.loads(body)
        except ValueError:
            return
        if isinstance(data, dict) and data.get("type") == PROBE_TYPE:
            if data.get("probe") == self._probe and not self._revocations.current:
                self._revocations.mark_current()
                log.info("revocation feed caught up")
            return
        try:
            event = parse_event(data)
        except (UnknownEventType, ValueError):
            return
        if isinstance(event, ApiKeyRevoked):
            for key_listener in self._key_listeners:
                key_listener(event)
            return
        if not isinstance(event, ACCESS_REVOKING_EVENTS) or event.user_id is None:
            return
        self._revocations.revoke(event.user_id, event.occurred_at.timestamp())
        for listener in self._listeners:
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("revocation listener failed", extra={"event_type": event.type})


async def declare_revocation_stream(
    channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> aio_pika.abc.AbstractQueue:
    """The stream of revoking events (idempotent: every reader declares and binds it)."""
    stream = await channel.declare_queue(
        topology.revocations_stream,
        durable=True,
        arguments={"x-queue-type": "stream", "x-max-age": STREAM_MAX_AGE},
    )
    events = await channel.declare_exchange(
        topology.events.name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    kinds: tuple[type[Event], ...] = (*ACCESS_REVOKING_EVENTS, ApiKeyRevoked)
    for kind in kinds:
        await stream.bind(events, routing_key=kind.routing_key)
    return stream
