"""What the gateway's edges (REST routes, the WebSocket) share, built once in `app.py`."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from starlette.requests import HTTPConnection

from services.gateway.fanout import StreamFanout
from services.gateway.service import ChatService
from services.gateway.settings import GatewaySettings
from services.knowledge.service import KnowledgeFiles
from shared.security import TokenVerifier


@dataclass(frozen=True)
class Gateway:
    settings: GatewaySettings
    chat: ChatService
    fanout: StreamFanout
    verifier: TokenVerifier
    knowledge: KnowledgeFiles


def get_gateway(connection: HTTPConnection) -> Gateway:
    gateway: Gateway = connection.app.state.gateway
    return gateway


def gateway_dependency(request: Request) -> Gateway:
    return get_gateway(request)
