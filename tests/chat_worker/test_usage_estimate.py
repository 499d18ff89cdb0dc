"""Usage estimated from text when the model reports none, and the reply's max_tokens: pure
parts of the worker."""

from __future__ import annotations

import pytest

from services.chat_worker.generation import reply_token_limit
from services.chat_worker.reply import ActiveReply, CoalescingPolicy
from services.chat_worker.settings import ChatWorkerSettings
from services.chat_worker.usage_estimate import (
    estimate_completion_tokens,
    estimate_prompt_tokens,
    estimate_text_tokens,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("Hi", 1),
        ("Hello, how are you today?", 7),  # 25 ASCII characters; OpenAI's tokenizers say 7
        ("x" * 4000, 1000),
        ("日本語のテキスト", 8),  # one token per CJK/kana character
        ("Привет", 3),  # other non-ASCII: one per two characters
        ("café", 2),  # 3 ASCII (0.75) + 1 accented (0.5), rounded up
    ],
)
def test_text_tokens_follow_the_documented_rule(text, tokens):
    assert estimate_text_tokens(text) == tokens


def test_a_non_latin_text_is_never_estimated_as_a_few_ascii_characters_would_be():
    # chars/4 alone would call 400 ideographs 100 tokens; real tokenizers need about 400.
    assert estimate_text_tokens("字" * 400) == 400


def test_a_prompt_counts_each_messages_framing_and_the_reply_priming():
    messages = [
        {"role": "system", "content": "Be terse."},  # 9 chars: 3 tokens
        {"role": "user", "content": "Tell me about rivers"},  # 20 chars: 5 tokens
    ]
    assert estimate_prompt_tokens(messages) == 3 + (3 + 3) + (3 + 5)
    assert estimate_prompt_tokens([]) == 3


def test_a_completion_is_never_fewer_tokens_than_the_chunks_it_streamed_in():
    assert estimate_completion_tokens("one two three four", chunks=4) == 5
    assert estimate_completion_tokens("a b c d e f g h", chunks=8) == 8
    assert estimate_completion_tokens("", chunks=0) == 0


def _reply() -> ActiveReply:
    return ActiveReply(
        conversation_id="c" * 12,
        message_id="m" * 10,
        reply_to="u" * 10,
        model="mock",
        attempt=1,
        policy=CoalescingPolicy(60.0, 1000),
    )


def test_a_replys_estimated_usage_is_its_prompt_and_its_text_including_unsent_deltas():
    reply = _reply()
    reply.prompt = [{"role": "user", "content": "x" * 40}]
    reply.add_delta("y" * 20)
    reply.flush()
    reply.add_delta("z" * 20)  # generated, not yet sent as a frame
    usage = reply.estimated_usage(chunks=2)
    assert (usage.prompt_tokens, usage.completion_tokens) == (3 + 3 + 10, 10)
    assert usage.total_tokens == 26
    frame = reply.completed_frame(usage, "stop", usage_estimated=True)
    assert frame.usage_estimated and frame.usage == usage


@pytest.mark.parametrize(
    ("requested", "default", "cap", "sent"),
    [
        (None, None, 16_384, None),  # neither says: the model's own default
        (None, 500, 16_384, 500),  # the worker's default
        (40, 500, 16_384, 40),  # the request's own wins over the worker's default
        (30_000, None, 16_384, 16_384),  # never above the cap
        (None, 20_000, 8_000, 8_000),  # the cap bounds the worker's default too
    ],
)
def test_the_model_gets_the_requests_max_tokens_within_the_cap(requested, default, cap, sent):
    settings = ChatWorkerSettings(max_reply_tokens=default, max_reply_tokens_cap=cap)
    assert reply_token_limit(requested, settings) == sent


def test_a_chat_reply_is_held_to_what_its_budget_reserved_by_default(monkeypatch) -> None:
    assert ChatWorkerSettings().max_reply_tokens == 4096
    monkeypatch.setenv("CONVOAI_MAX_REPLY_TOKENS", "")
    assert ChatWorkerSettings().max_reply_tokens is None
