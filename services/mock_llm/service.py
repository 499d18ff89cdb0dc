"""What mock_llm answers, as pure functions tests can call to predict a reply exactly.

A reply is `reply_tokens` words picked by hashing the last user message, so the same request
always streams the same text, and a test can compute it with `expected_reply(...)` without
talking to the server. One token is one word (with its leading space), one chunk is one token.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from services.mock_llm.settings import MockLLMSettings

# A few non-ASCII words make sure clients reassemble multi-byte text exactly.
VOCABULARY: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    "yankee", "zulu", "stream", "token", "reply", "model", "river", "stone",
    "cloud", "light", "quiet", "rapid", "broker", "queue", "frame", "socket",
    "naïve", "café", "über", "smörgåsbord", "日本", "ünïcödé", "—", "déjà-vu",
    "apple", "maple", "cedar", "birch", "amber", "coral", "ivory", "onyx",
    "north", "south", "east", "west", "spring", "summer", "autumn", "winter",
)  # fmt: skip


@dataclass(frozen=True)
class Reply:
    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


def last_user_message(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _content_text(content: Any) -> str:
    """OpenAI content is a string or a list of parts; only text parts count here."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Words of every message plus a small per-message overhead, like real tokenizers add."""
    return sum(4 + len(_content_text(m.get("content")).split()) for m in messages)


@lru_cache(maxsize=4096)
def reply_tokens_for(prompt: str, count: int, seed: str) -> tuple[str, ...]:
    """`count` words derived from `prompt`: the first capitalised, the last ending the sentence."""
    words: list[str] = []
    block = 0
    while len(words) < count:
        digest = hashlib.sha256(f"{seed}\x00{block}\x00{prompt}".encode()).digest()
        words.extend(VOCABULARY[b % len(VOCABULARY)] for b in digest)
        block += 1
    words = words[:count]
    words[0] = words[0][:1].upper() + words[0][1:]
    words[-1] = words[-1] + "."
    return tuple(words[:1]) + tuple(" " + w for w in words[1:])


def expected_reply(
    messages: Sequence[Mapping[str, Any]],
    settings: MockLLMSettings,
    max_tokens: int | None = None,
    reply_tokens: int | None = None,
    content: str | None = None,
) -> Reply:
    """Exactly what mock_llm streams for this request (absent faults that cut it short).

    `reply_tokens` is the length a matching fault rule sets instead of the configured one;
    `content` is the text a matching rule makes the reply (one token per word).
    """
    if content:
        tokens = tuple(re.findall(r"\s*\S+", content)) or (content,)
    else:
        count = reply_tokens or settings.reply_tokens
        tokens = reply_tokens_for(last_user_message(messages), count, settings.seed)
    finish_reason = "stop"
    if max_tokens is not None and 0 < max_tokens < len(tokens):
        tokens = tokens[:max_tokens]
        finish_reason = "length"
    return Reply(tokens, finish_reason, count_prompt_tokens(messages))


@dataclass
class FaultRule:
    """What to do to the next `times` matching calls (`times` -1: every call)."""

    status: int | None = None
    """Answer this HTTP status instead of a completion."""
    cut_after: int | None = None
    """Close the stream after this many content chunks, with no finish_reason, usage or [DONE]."""
    stall_after: int | None = None
    """Stop sending after this many content chunks and hold the connection `stall_s`."""
    stall_s: float = 3600.0
    tokens_per_second: float | None = None
    ttft_ms: float | None = None
    reply_tokens: int | None = None
    write_window_ms: float | None = None
    """Pace and length overrides: a rule may also just shape the calls it matches."""
    content: str | None = None
    """Reply with this text instead of the hashed words (e.g. hostile Markdown for the web app)."""
    omit_usage: bool = False
    """Send no usage, even when asked (`stream_options.include_usage`), as some servers do."""
    times: int = 1
    match: str | None = None
    """Only calls whose last user message contains this text (so parallel tests do not collide)."""

    def applies_to(self, prompt: str) -> bool:
        return self.times != 0 and (self.match is None or self.match in prompt)


@dataclass
class FaultPlan:
    """Rules applied in the order they were added; each call consumes at most one."""

    rules: list[FaultRule] = field(default_factory=list)

    def add(self, rule: FaultRule) -> None:
        self.rules.append(rule)

    def clear(self) -> None:
        self.rules.clear()

    def take(self, prompt: str) -> FaultRule | None:
        for rule in self.rules:
            if rule.applies_to(prompt):
                if rule.times > 0:
                    rule.times -= 1
                self.rules = [r for r in self.rules if r.times != 0]
                return rule
        return None


@dataclass
class MockStats:
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cut: int = 0
    streams_disconnected: int = 0
    errors_injected: int = 0
    active_streams: int = 0
    embedding_requests: int = 0


EMBEDDING_DIMENSIONS = 512
_EMBEDDING_STOP_WORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "has", "have",
    "how", "i", "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was",
    "what", "when", "where", "which", "who", "why", "will", "with", "you", "your",
))  # fmt: skip
_WORD = re.compile(r"\w+")


def embed_text(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic, unit-length embedding: the hashed bag of the text's words (stop words
    left out), so texts sharing words are similar and texts sharing none are nearly orthogonal
    — enough for tests of vector ranking without a model."""
    vector = [0.0] * dimensions
    for word in _WORD.findall(text.lower()):
        if word in _EMBEDDING_STOP_WORDS:
            continue
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dimensions
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0:
        vector[0] = 1.0
        return vector
    return [v / norm for v in vector]
