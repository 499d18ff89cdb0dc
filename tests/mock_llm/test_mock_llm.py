"""mock_llm speaks the OpenAI protocol (checked with the official SDK) and injects faults."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from services.mock_llm.app import create_app
from services.mock_llm.service import expected_reply
from services.mock_llm.settings import MockLLMSettings

pytestmark = pytest.mark.e2e

REPLY_TOKENS = 12


@pytest.fixture(scope="module")
def mock_llm(start_service):
    return start_service("mock_llm", CONVOAI_MOCK_LLM_REPLY_TOKENS=str(REPLY_TOKENS))


@pytest.fixture(scope="module")
def settings() -> MockLLMSettings:
    return MockLLMSettings(reply_tokens=REPLY_TOKENS)


@pytest.fixture
async def client(mock_llm):
    httpx.delete(f"{mock_llm.url}/_faults")
    sdk = openai.AsyncOpenAI(base_url=f"{mock_llm.url}/v1", api_key="test", max_retries=0)
    yield sdk
    await sdk.close()
    httpx.delete(f"{mock_llm.url}/_faults")


def _fault(mock_llm, **rule) -> None:
    assert httpx.post(f"{mock_llm.url}/_faults", json=rule).status_code == 201


async def _stream(client, messages, **kwargs):
    """(content deltas, finish_reason, usage) of one streamed completion."""
    stream = await client.chat.completions.create(
        model="mock-gpt",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    )
    deltas: list[str] = []
    finish_reason = None
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason:
                finish_reason = choice.finish_reason
    return deltas, finish_reason, usage


async def test_streamed_reply_is_the_predicted_one_with_matching_usage(client, settings):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    deltas, finish_reason, usage = await _stream(client, messages)
    expected = expected_reply(messages, settings)
    assert "".join(deltas) == expected.text
    assert len(deltas) == REPLY_TOKENS == usage.completion_tokens
    assert usage.prompt_tokens == expected.prompt_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert finish_reason == "stop"


async def test_reply_depends_on_the_last_user_message_only(client, settings):
    first, _, _ = await _stream(client, [{"role": "user", "content": "one"}])
    again, _, _ = await _stream(client, [{"role": "user", "content": "one"}])
    other, _, _ = await _stream(client, [{"role": "user", "content": "two"}])
    assert first == again
    assert first != other


async def test_non_streaming_completion(client, settings):
    messages = [{"role": "user", "content": "no stream please"}]
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    expected = expected_reply(messages, settings)
    assert completion.choices[0].message.content == expected.text
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == REPLY_TOKENS
    assert completion.model == "gpt-4o-mini"


async def test_max_tokens_truncates_with_finish_reason_length(client, settings):
    messages = [{"role": "user", "content": "long one"}]
    deltas, finish_reason, usage = await _stream(client, messages, max_tokens=5)
    assert "".join(deltas) == expected_reply(messages, settings, max_tokens=5).text
    assert (len(deltas), usage.completion_tokens, finish_reason) == (5, 5, "length")


async def test_models_are_listed(client):
    models = await client.models.list()
    assert "mock-gpt" in [m.id for m in models.data]


async def test_injected_status_for_the_next_calls_then_success(client, mock_llm):
    _fault(mock_llm, status=500, times=2)
    messages = [{"role": "user", "content": "flaky"}]
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await _stream(client, messages)
    deltas, finish_reason, _ = await _stream(client, messages)
    assert len(deltas) == REPLY_TOKENS and finish_reason == "stop"


async def test_rate_limit_status(client, mock_llm):
    _fault(mock_llm, status=429)
    with pytest.raises(openai.RateLimitError):
        await _stream(client, [{"role": "user", "content": "busy"}])


async def test_cut_stream_ends_without_finish_reason_or_usage(client, mock_llm, settings):
    _fault(mock_llm, cut_after=3)
    messages = [{"role": "user", "content": "cut me"}]
    deltas, finish_reason, usage = await _stream(client, messages)
    assert deltas == list(expected_reply(messages, settings).tokens[:3])
    assert finish_reason is None and usage is None


async def test_stall_holds_the_connection_until_the_client_gives_up(client, mock_llm):
    _fault(mock_llm, stall_after=2, stall_s=30)
    before = httpx.get(f"{mock_llm.url}/_stats").json()
    messages = [{"role": "user", "content": "stall"}]
    stream = await client.chat.completions.create(
        model="mock-gpt", messages=messages, stream=True, timeout=0.5
    )
    deltas: list[str] = []
    with pytest.raises(openai.APITimeoutError):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
    # The client gave up on a silent read after two tokens, before the stall ended the stream.
    assert len(deltas) == 2
    after = httpx.get(f"{mock_llm.url}/_stats").json()
    assert after["streams_cut"] == before["streams_cut"]


async def test_fault_matching_a_prompt_leaves_other_calls_alone(client, mock_llm):
    _fault(mock_llm, status=503, match="[fail-me]")
    deltas, _, _ = await _stream(client, [{"role": "user", "content": "innocent"}])
    assert len(deltas) == REPLY_TOKENS
    with pytest.raises(openai.InternalServerError):
        await _stream(client, [{"role": "user", "content": "please [fail-me] now"}])


async def test_pace_follows_time_to_first_token_and_tokens_per_second(client, mock_llm):
    _fault(mock_llm, ttft_ms=150, tokens_per_second=40)
    stream = await client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "slowly"}], stream=True
    )
    started = time.monotonic()
    arrivals: list[float] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert arrivals[0] >= 0.14
    # 11 more tokens at 40/s: at least 0.275 s after the first one.
    assert arrivals[-1] - arrivals[0] >= 0.25


async def test_stats_count_completed_and_cut_streams(client, mock_llm):
    before = httpx.get(f"{mock_llm.url}/_stats").json()
    _fault(mock_llm, cut_after=1)
    await _stream(client, [{"role": "user", "content": "a"}])
    await _stream(client, [{"role": "user", "content": "b"}])
    after = httpx.get(f"{mock_llm.url}/_stats").json()
    assert after["streams_cut"] == before["streams_cut"] + 1
    assert after["streams_completed"] == before["streams_completed"] + 1
    assert after["active_streams"] == 0


async def test_api_key_is_required_when_configured():
    app = create_app(MockLLMSettings(api_key="sk-local"))
    transport = httpx.ASGITransport(app=app)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(transport=transport, base_url="http://mock") as http:
        refused = await http.post("/v1/chat/completions", json=body)
        accepted = await http.post(
            "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-local"}
        )
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert accepted.status_code == 200


async def test_bad_request_is_refused():
    transport = httpx.ASGITransport(app=create_app(MockLLMSettings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://mock") as http:
        response = await http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert response.status_code == 422


async def test_a_rule_can_set_length_and_pace_of_the_calls_it_matches(client, mock_llm):
    content = "[bench] shaped"
    _fault(mock_llm, reply_tokens=7, tokens_per_second=0, times=-1, match="[bench]")
    messages = [{"role": "user", "content": content}]
    config = httpx.get(f"{mock_llm.url}/_config").json()
    assert "api_key" not in config
    settings = MockLLMSettings(**config)
    for _ in range(2):
        deltas, _, usage = await _stream(client, messages)
        assert "".join(deltas) == expected_reply(messages, settings, reply_tokens=7).text
        assert usage.completion_tokens == 7
    other, _, _ = await _stream(client, [{"role": "user", "content": "plain"}])
    assert len(other) == REPLY_TOKENS


async def test_a_rule_can_set_the_reply_text_streamed_word_by_word(client, mock_llm):
    text = "Hi <b>there</b>\n\n```py\nprint(1)\n```"
    _fault(mock_llm, content=text, match="[content]")
    deltas, finish_reason, usage = await _stream(client, [{"role": "user", "content": "[content]"}])
    assert "".join(deltas) == text
    assert deltas == ["Hi", " <b>there</b>", "\n\n```py", "\nprint(1)", "\n```"]
    assert usage.completion_tokens == len(deltas) and finish_reason == "stop"
    other, _, _ = await _stream(client, [{"role": "user", "content": "[content]"}])
    assert len(other) == REPLY_TOKENS


async def test_a_rule_can_omit_usage_from_the_calls_it_matches(client, mock_llm, settings):
    _fault(mock_llm, omit_usage=True, match="no usage", times=2)
    messages = [{"role": "user", "content": "no usage please"}]
    deltas, finish_reason, usage = await _stream(client, messages)
    # The whole reply and its finish, without the usage chunk it was asked for.
    assert "".join(deltas) == expected_reply(messages, settings).text
    assert finish_reason == "stop" and usage is None
    whole = await client.chat.completions.create(model="mock-gpt", messages=messages)
    assert whole.choices[0].message.content == expected_reply(messages, settings).text
    assert whole.usage is None
    # Calls it does not match still report usage.
    _, _, usage = await _stream(client, [{"role": "user", "content": "with usage"}])
    assert usage is not None and usage.completion_tokens == REPLY_TOKENS


async def test_recorded_requests_show_the_max_tokens_the_model_was_given(client, mock_llm):
    httpx.delete(f"{mock_llm.url}/_requests")
    await _stream(client, [{"role": "user", "content": "limited"}], max_tokens=7)
    await _stream(client, [{"role": "user", "content": "unlimited"}])
    recorded = httpx.get(f"{mock_llm.url}/_requests").json()["requests"]
    assert [(r["messages"][-1]["content"], r["max_tokens"]) for r in recorded] == [
        ("limited", 7),
        ("unlimited", None),
    ]
