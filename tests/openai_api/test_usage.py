"""Usage through `/v1` all the way to analytics: exact when the model reports it, estimated and
flagged as such when it does not, per API key and user; a request's `max_tokens` reaches the
model. An analytics consumer of this module's own reads the stack's events."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text

from services.chat_worker.usage_estimate import estimate_completion_tokens, estimate_prompt_tokens
from services.mock_llm.service import Reply, expected_reply
from services.mock_llm.settings import MockLLMSettings
from shared.db import create_engine
from tests.infra import TestInfrastructure as Infrastructure
from tests.openai_api.conftest import STARTUP_TIMEOUT_S, Stack, create_key
from tests.processes import ServiceProcess

pytestmark = pytest.mark.e2e

SYSTEM = "You are terse."
MODEL = "mock-model"


@pytest.fixture(scope="module")
def analytics(stack: Stack, infra: Infrastructure) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        "analytics_consumer",
        infra.env(
            CONVOAI_DATABASE_URL=stack.database_url,
            CONVOAI_NAMESPACE=stack.namespace,
            CONVOAI_HTTP_METRICS_ENABLED="false",
        ),
        instance_id="analytics-oai",
    )
    process.start(wait=False)
    process.wait_healthy(STARTUP_TIMEOUT_S)
    yield process
    process.stop()


@pytest.fixture
async def chat_db(stack: Stack) -> AsyncIterator[Any]:
    engine = create_engine(stack.database_url, pool_size=1)
    yield engine
    await engine.dispose()


def sdk(stack: Stack, api_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.gateway_a.url}/v1", api_key=api_key, max_retries=0)


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def expected(prompt: str, max_tokens: int | None = None) -> Reply:
    return expected_reply(messages(prompt), MockLLMSettings(), max_tokens)


async def streamed(client: openai.AsyncOpenAI, prompt: str, **extra: Any) -> tuple[str, Any, str]:
    """(text, usage, completion id) of one streamed completion that asks for its usage."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=messages(prompt),
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    reply_text, usage, completion_id = "", None, ""
    async for chunk in stream:
        completion_id = chunk.id
        if chunk.choices:
            reply_text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None
    return reply_text, usage, completion_id


def estimated_flag(usage: Any) -> Any:
    """The `estimated` extension field of a `/v1` usage object (docs/openai-api.md)."""
    return (usage.model_extra or {}).get("estimated")


async def eventually(
    read: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout_s: float = 30.0
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"not reached within {timeout_s}s: {value!r}"
        await asyncio.sleep(0.1)


async def get_json(url: str, headers: dict[str, str], **params: Any) -> Any:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(url, headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def key_rows(analytics: ServiceProcess, headers: dict[str, str], **params: Any):
    async def read() -> list[dict[str, Any]]:
        page = await get_json(f"{analytics.url}/api/v1/analytics/api-keys", headers, **params)
        items: list[dict[str, Any]] = page["items"]
        return items

    return read


async def fault(stack: Stack, **rule: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.mock_llm.url, timeout=10) as client:
        (await client.post("/_faults", json=rule)).raise_for_status()


async def test_exact_usage_equals_the_models_and_analytics_counts_it_per_key_and_user(
    stack, analytics, auth_http, new_api_user, admin_headers
):
    user = await new_api_user()
    key = await create_key(auth_http, user, name="laptop")
    client = sdk(stack, key["secret"])

    first = f"Tell me about rivers {secrets.token_hex(4)}"
    whole = await client.chat.completions.create(model=MODEL, messages=messages(first))
    assert whole.choices[0].message.content == expected(first).text
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (
        expected(first).prompt_tokens,
        expected(first).completion_tokens,
    )
    assert estimated_flag(whole.usage) is False

    second = f"Tell me about stones {secrets.token_hex(4)}"
    reply_text, usage, _ = await streamed(client, second)
    assert reply_text == expected(second).text
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        expected(second).prompt_tokens,
        expected(second).completion_tokens,
    )
    assert estimated_flag(usage) is False

    prompt_tokens = expected(first).prompt_tokens + expected(second).prompt_tokens
    completion_tokens = expected(first).completion_tokens + expected(second).completion_tokens
    rows = await eventually(
        key_rows(analytics, admin_headers, user_id=user.id),
        lambda rows: bool(rows) and rows[0]["requests"] == 2 and rows[0]["name"] is not None,
    )
    assert len(rows) == 1
    row = rows[0]
    assert (row["api_key_id"], row["user_id"], row["username"]) == (
        key["id"],
        user.id,
        user.username,
    )
    assert (row["name"], row["prefix"]) == ("laptop", key["prefix"])
    assert (row["replies_completed"], row["prompt_tokens"], row["completion_tokens"]) == (
        2,
        prompt_tokens,
        completion_tokens,
    )
    assert row["estimated_replies"] == row["estimated_prompt_tokens"] == 0

    # The user sees their own key's usage; another user sees none of it.
    own = await get_json(f"{analytics.url}/api/v1/analytics/me/api-keys", user.headers)
    assert own["items"] == rows
    stranger = await new_api_user()
    theirs = await get_json(f"{analytics.url}/api/v1/analytics/me/api-keys", stranger.headers)
    assert theirs["items"] == []

    # The same tokens under the user.
    conversations = await get_json(
        f"{analytics.url}/api/v1/analytics/conversations", admin_headers, user_id=user.id
    )
    assert sum(c["prompt_tokens"] for c in conversations["items"]) == prompt_tokens
    assert sum(c["completion_tokens"] for c in conversations["items"]) == completion_tokens


async def test_a_stream_without_usage_is_estimated_and_flagged_up_to_analytics(
    stack, analytics, auth_http, new_api_user, admin_headers, chat_db
):
    user = await new_api_user()
    key = await create_key(auth_http, user)
    client = sdk(stack, key["secret"])
    tag = f"nousage-{secrets.token_hex(4)}"
    await fault(stack, omit_usage=True, match=tag, times=2)

    prompt = f"Tell me about clouds {tag}"
    reply = expected(prompt)
    reply_text, usage, completion_id = await streamed(client, prompt)
    assert reply_text == reply.text
    # The worker's estimate from the prompt it sent and the text it got, flagged as such.
    assert estimated_flag(usage) is True
    assert usage.prompt_tokens == estimate_prompt_tokens(messages(prompt))
    assert usage.completion_tokens == estimate_completion_tokens(reply.text, len(reply.tokens))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    whole_prompt = f"Tell me about fog {tag}"
    whole = await client.chat.completions.create(model=MODEL, messages=messages(whole_prompt))
    assert whole.usage is not None and estimated_flag(whole.usage) is True
    assert whole.usage.prompt_tokens == estimate_prompt_tokens(messages(whole_prompt))

    # The stored reply says so.
    async with chat_db.connect() as conn:
        stored = (
            await conn.execute(
                text(
                    "SELECT usage_estimated, prompt_tokens, completion_tokens "
                    "FROM chat.messages WHERE reply_to = :id"
                ),
                {"id": completion_id.removeprefix("chatcmpl-")},
            )
        ).one()
    assert tuple(stored) == (True, usage.prompt_tokens, usage.completion_tokens)

    # Analytics counts them in the totals and apart, per key, per model and overall.
    prompt_tokens = usage.prompt_tokens + whole.usage.prompt_tokens
    completion_tokens = usage.completion_tokens + whole.usage.completion_tokens
    rows = await eventually(
        key_rows(analytics, admin_headers, user_id=user.id),
        lambda rows: bool(rows) and rows[0]["requests"] == 2,
    )
    row = rows[0]
    assert row["estimated_replies"] == 2
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt_tokens, completion_tokens)
    assert (row["estimated_prompt_tokens"], row["estimated_completion_tokens"]) == (
        prompt_tokens,
        completion_tokens,
    )
    summary = await get_json(f"{analytics.url}/api/v1/analytics/summary", admin_headers)
    assert summary["estimated_replies"] >= 2
    assert summary["estimated_prompt_tokens"] >= prompt_tokens
    models = await get_json(f"{analytics.url}/api/v1/analytics/models", admin_headers)
    [model] = [m for m in models["items"] if m["model"] == MODEL]
    assert model["estimated_replies"] >= 2


async def test_a_stream_the_client_abandons_is_charged_an_estimate_not_zero(
    stack, auth_http, new_api_user, chat_db
):
    user = await new_api_user()
    key = await create_key(auth_http, user)
    tag = f"abandon-{secrets.token_hex(4)}"
    await fault(stack, tokens_per_second=5, match=tag)
    prompt = f"Tell me a long story {tag}"
    stream = await sdk(stack, key["secret"]).chat.completions.create(
        model=MODEL,
        messages=messages(prompt),
        stream=True,
    )
    completion_id, received = "", ""
    async for chunk in stream:
        completion_id = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            received += chunk.choices[0].delta.content
            break
    await stream.close()  # the client goes away mid-reply: the gateway cancels it

    async def stored() -> Any:
        async with chat_db.connect() as conn:
            return (
                await conn.execute(
                    text(
                        "SELECT status, usage_estimated, prompt_tokens, completion_tokens "
                        "FROM chat.messages WHERE reply_to = :id"
                    ),
                    {"id": completion_id.removeprefix("chatcmpl-")},
                )
            ).one_or_none()

    row = await eventually(stored, lambda row: row is not None and row[0] == "cancelled")
    assert received
    assert row[1] is True
    assert row[2] == estimate_prompt_tokens(messages(prompt))
    assert row[3] >= 1


async def test_the_requests_max_tokens_reaches_the_model(stack, auth_http, new_api_user):
    user = await new_api_user()
    key = await create_key(auth_http, user)
    client = sdk(stack, key["secret"])
    prompt = f"Tell me about winds {secrets.token_hex(4)}"
    limited = expected(prompt, max_tokens=5)
    whole = await client.chat.completions.create(
        model=MODEL,
        messages=messages(prompt),
        max_tokens=5,
    )
    assert whole.choices[0].message.content == limited.text
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 5
    async with httpx.AsyncClient(base_url=stack.mock_llm.url, timeout=10) as mock:
        recorded = (await mock.get("/_requests")).json()["requests"]
    [call] = [r for r in recorded if r["kind"] == "chat" and r["messages"][-1]["content"] == prompt]
    assert call["max_tokens"] == 5
