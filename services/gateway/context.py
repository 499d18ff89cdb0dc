"""What the gateway's edges (REST routes, the WebSocket) share, built once in `app.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from services.gateway.admissions import AdmissionPolicy
from services.gateway.api_keys import ApiKeyDirectory
from services.gateway.fanout import StreamFanout
from services.gateway.open_sockets import OpenSockets
from services.gateway.service import ChatService
from services.gateway.settings import GatewaySettings
from services.knowledge.service import KnowledgeFiles
from shared.outbox import Outbox
from shared.security import TokenVerifier


@dataclass(frozen=True)
class Gateway:
    settings: GatewaySettings
    chat: ChatService
    fanout: StreamFanout
    verifier: TokenVerifier
    sockets: OpenSockets
    knowledge: KnowledgeFiles
    outbox: Outbox
    admissions: AdmissionPolicy
    """What each door asks of the budget ledger."""
    api_keys: ApiKeyDirectory

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """The edge's unit of work (a REST request, a WebSocket frame): one session, committed
        when the block succeeds, rolled back when it raises; its events are published after
        the commit."""
        async with self.outbox.unit_of_work() as session:
            yield session


def get_gateway(connection: HTTPConnection) -> Gateway:
    gateway: Gateway = connection.app.state.gateway
    return gateway


def gateway_dependency(request: Request) -> Gateway:
    return get_gateway(request)
