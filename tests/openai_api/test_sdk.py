"""The official `openai` SDK against the gateway's `/v1`, answered by mock_llm via a worker."""

from __future__ import annotations

import secrets

import openai
import pytest

from services.mock_llm.service import expected_reply
from services.mock_llm.settings import MockLLMSettings
from tests.openai_api.conftest import create_key, sdk

pytestmark = pytest.mark.e2e

SYSTEM = "You are terse."


def expected(prompt: str):
    return expected_reply(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        MockLLMSettings(),
    )


async def test_models_streamed_and_whole_completion(stack, auth_http, new_api_user):
    user = await new_api_user()
    key = await create_key(auth_http, user)
    assert key["secret"].startswith("cvai-") and key["secret"].startswith(key["prefix"])
    client = sdk(stack, key["secret"])

    models = [m.id async for m in client.models.list()]
    assert "mock-model" in models

    prompt = f"Tell me about rivers {secrets.token_hex(4)}"
    reply = expected(prompt)
    whole = await client.chat.completions.create(
        model="mock-model",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
    )
    assert whole.choices[0].message.content == reply.text
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (
        reply.prompt_tokens,
        reply.completion_tokens,
    )

    prompt = f"Tell me about stones {secrets.token_hex(4)}"
    reply = expected(prompt)
    stream = await client.chat.completions.create(
        model="mock-model",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == reply.text and finish == "stop"
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        reply.prompt_tokens,
        reply.completion_tokens,
    )


async def test_access_token_works_and_bad_key_is_401(stack, new_api_user):
    user = await new_api_user()
    prompt = f"hello {secrets.token_hex(4)}"
    whole = await sdk(stack, user.access_token, "b").chat.completions.create(
        model="mock-model",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
    )
    assert whole.choices[0].message.content == expected(prompt).text
    with pytest.raises(openai.AuthenticationError):
        await sdk(stack, "cvai-" + secrets.token_urlsafe(32)).models.list()


async def test_unknown_model_is_404(stack, auth_http, new_api_user):
    user = await new_api_user()
    key = await create_key(auth_http, user)
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk(stack, key["secret"]).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"
