"""Anonymous chat (CONVOAI_ALLOW_ANONYMOUS): off by default; when on, one ephemeral
conversation per socket, gone when the socket closes, under a strict per-address limit."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from services.chat.models import Conversation
from shared.db import create_engine, create_session_factory, transaction
from tests.gateway.conftest import GATEWAY_ENV, create_conversation, open_socket

pytestmark = pytest.mark.e2e


async def test_anonymous_is_refused_by_default(gateway):
    socket = await open_socket(gateway)
    await socket.send({"type": "auth", "anonymous": True})
    assert (await socket.recv())["code"] == "anonymous_disabled"


async def test_anonymous_socket_gets_an_ephemeral_rate_limited_conversation(
    infra, start_service, gateway, new_user
):
    anon_gateway = start_service(
        "gateway",
        instance_id="gw-anon",
        CONVOAI_ALLOW_ANONYMOUS="true",
        CONVOAI_ANONYMOUS_MESSAGES_PER_MINUTE="3",
        **GATEWAY_ENV,
    )
    socket = await open_socket(anon_gateway)
    ready = await socket.request({"type": "auth", "anonymous": True}, "ready")
    assert ready["anonymous"] is True and ready["limits"]["messages_per_minute"] == 3
    started = await socket.request({"type": "start_conversation"}, "conversation.started")
    cid = started["conversation_id"]
    for i in range(3):
        await socket.request(
            {
                "type": "send_message",
                "conversation_id": cid,
                "content": "hi",
                "client_message_id": str(i),
            },
            "ack",
        )
    limited = await socket.request(
        {"type": "send_message", "conversation_id": cid, "content": "hi", "client_message_id": "3"},
        "error",
    )
    assert limited["code"] == "rate_limited"
    second = await socket.request({"type": "start_conversation"}, "error")
    assert second["code"] == "bad_request"

    # A new anonymous socket from the same address does not get a fresh allowance.
    other = await open_socket(anon_gateway)
    await other.request({"type": "auth", "anonymous": True}, "ready")
    other_cid = (await other.request({"type": "start_conversation"}, "conversation.started"))[
        "conversation_id"
    ]
    refused = await other.request(
        {
            "type": "send_message",
            "conversation_id": other_cid,
            "content": "x",
            "client_message_id": "a",
        },
        "error",
    )
    assert refused["code"] == "rate_limited"
    # Nor can it see a registered user's conversation.
    alice_cid = (await create_conversation(anon_gateway, new_user()))["id"]
    assert (await other.request({"type": "subscribe", "conversation_id": alice_cid}, "error"))[
        "code"
    ] == "not_found"

    engine = create_engine(infra.database_url, pool_size=1)
    sessions = create_session_factory(engine)

    async def stored(conversation_id: str) -> bool:
        async with transaction(sessions) as session:
            found = await session.scalar(
                select(Conversation).where(Conversation.id == conversation_id)
            )
        return found is not None

    assert await stored(cid)
    await socket.close()
    await other.close()
    for conversation_id in (cid, other_cid):
        for _ in range(100):
            if not await stored(conversation_id):
                break
            await asyncio.sleep(0.05)
        assert not await stored(conversation_id), "ephemeral conversation kept"
    await engine.dispose()
