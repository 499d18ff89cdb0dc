"""Building what the model sees: a system prompt and the newest history that fits a budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

CHARS_PER_TOKEN = 4
"""Rough size of a token in English text; the budget only needs to be approximately right."""

MESSAGE_OVERHEAD_TOKENS = 4


class Turn(NamedTuple):
    """A tuple, not a frozen dataclass: a claim builds up to 200 of them per reply, and a frozen
    dataclass's `__init__` cost more than decoding the history (profiled)."""

    role: str
    content: str


def estimate_tokens(text: str) -> int:
    return MESSAGE_OVERHEAD_TOKENS + (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def build_prompt(
    system_prompt: str,
    history: Sequence[Turn],
    budget_tokens: int,
    knowledge: str | None = None,
) -> list[dict[str, str]]:
    """System prompt, then the newest turns of `history` (oldest first) within `budget_tokens`.

    The last turn (the message being answered) is always included, even over budget: a reply to
    a long message is better than no reply; the model reports it if the context is too long.
    `knowledge` (excerpts of an assistant's files, sized by their own budget) follows the system
    prompt as a second system message and is paid for by dropping older history.
    """
    remaining = budget_tokens - estimate_tokens(system_prompt)
    if knowledge is not None:
        remaining -= estimate_tokens(knowledge)
    kept: list[Turn] = []
    for index, turn in enumerate(reversed(history)):
        cost = estimate_tokens(turn.content)
        if index > 0 and cost > remaining:
            break
        kept.append(turn)
        remaining -= cost
    # A history must not start with an orphan assistant turn whose question was dropped.
    while len(kept) > 1 and kept[-1].role == "assistant":
        kept.pop()
    messages = [{"role": "system", "content": system_prompt}]
    if knowledge is not None:
        messages.append({"role": "system", "content": knowledge})
    messages.extend({"role": t.role, "content": t.content} for t in reversed(kept))
    return messages
