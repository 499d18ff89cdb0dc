"""Token counts estimated from text, for a reply whose model reported no usage (a stream without
a usage chunk, or one the user stopped). The counts are flagged `usage_estimated` wherever they
go: the reply row, its event, analytics, the `/v1` answer.

An estimate, not a tokenizer. Exact counts need the model's own tokenizer, which ConvoAI does not
know for an arbitrary OpenAI-compatible server (tiktoken also downloads its vocabularies at run
time, which an offline installation cannot). The rule, after OpenAI's published rules of thumb:

- ASCII text: one token per 4 characters ("1 token ≈ 4 characters of English").
- CJK, kana and other characters from U+3000 up: one token each (their tokenizers rarely merge
  them); other non-ASCII characters (accented Latin, Cyrillic, Greek, ...): one per 2.
- A chat prompt: 3 tokens of framing per message plus 3 that prime the reply (OpenAI's cookbook
  count for its chat models).
- A completion is at least one token per streamed content chunk (servers never send a chunk
  with less than a token), so the estimate is never below the chunk count.

On English prose this lands within about a fifth of OpenAI's tokenizers; it errs high rather
than low on other scripts, so a budget is not undercharged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

ASCII_CHARS_PER_TOKEN = 4
OTHER_CHARS_PER_TOKEN = 2
_WIDE_CHAR = re.compile("[\u3000-\U0010ffff]")
"""From U+3000 on (CJK punctuation, kana, ideographs, Hangul, ...): one token per character."""
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3


def estimate_text_tokens(text: str) -> int:
    """Tokens of `text` by the rule above; 0 only for empty text."""
    # Counted in C (encode, regex), not per character in Python: a prompt has thousands.
    if text.isascii():
        return math.ceil(len(text) / ASCII_CHARS_PER_TOKEN)
    ascii_chars = len(text.encode("ascii", "ignore"))
    wide_chars = len(_WIDE_CHAR.findall(text))
    other_chars = len(text) - ascii_chars - wide_chars
    return math.ceil(
        ascii_chars / ASCII_CHARS_PER_TOKEN + other_chars / OTHER_CHARS_PER_TOKEN + wide_chars
    )


def estimate_prompt_tokens(messages: Iterable[Mapping[str, str]]) -> int:
    """Tokens of a chat prompt as sent to the model (role/content messages)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE + estimate_text_tokens(message.get("content") or "")
    return total


def estimate_completion_tokens(text: str, chunks: int) -> int:
    """Tokens of a reply's text, never fewer than the content chunks it streamed in."""
    return max(chunks, estimate_text_tokens(text))
