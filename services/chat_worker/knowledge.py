"""What an assistant's knowledge files add to a prompt: the best-matching chunks within a
token budget, and the sources the reply then names.

Only conversations started from an assistant pay for it (one indexed query; in hybrid mode
also one embeddings call). A failed lookup never fails the reply: it is answered without
excerpts, and the log says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import openai
from sqlalchemy.ext.asyncio import AsyncEngine

from services.chat_worker.prompt import estimate_tokens
from services.knowledge import embeddings, repository, retrieval
from shared.db import driver_connection
from shared.events import SourceRef

log = logging.getLogger(__name__)

PREAMBLE = (
    "Excerpts from the files attached to this assistant follow. Use them when they answer "
    "the user's question and name the file you used; say so when they do not."
)


class RetrievalMode(StrEnum):
    OFF = "off"
    FULL_TEXT = "full_text"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class Knowledge:
    prompt: str | None
    sources: list[SourceRef] = field(default_factory=list)


NO_KNOWLEDGE = Knowledge(None)


def select_within_budget(
    hits: Sequence[retrieval.Hit], budget_tokens: int, max_chunks: int
) -> list[retrieval.Hit]:
    """The best hits, in rank order, whose excerpts fit `budget_tokens` together."""
    chosen: list[retrieval.Hit] = []
    remaining = budget_tokens - estimate_tokens(PREAMBLE)
    for hit in hits:
        if len(chosen) >= max_chunks:
            break
        cost = estimate_tokens(_excerpt(hit))
        if cost > remaining:
            continue
        chosen.append(hit)
        remaining -= cost
    return chosen


def _excerpt(hit: retrieval.Hit) -> str:
    where = f"part {hit.position + 1}" + (f", page {hit.page}" if hit.page else "")
    return f"[{hit.name} — {where}]\n{hit.content}"


def knowledge_prompt(hits: Sequence[retrieval.Hit]) -> str:
    return "\n\n".join([PREAMBLE, *(_excerpt(h) for h in hits)])


@dataclass
class KnowledgeContext:
    engine: AsyncEngine
    client: openai.AsyncOpenAI
    budget_tokens: int
    max_chunks: int
    embedding_model: str
    min_similarity: float
    mode: RetrievalMode = RetrievalMode.FULL_TEXT

    async def detect_mode(self) -> RetrievalMode:
        """Hybrid when the migration found pgvector and an embeddings model is configured."""
        if self.budget_tokens <= 0:
            self.mode = RetrievalMode.OFF
        elif self.embedding_model:
            async with driver_connection(self.engine) as connection:
                hybrid = await repository.embeddings_column_exists(connection)
            self.mode = RetrievalMode.HYBRID if hybrid else RetrievalMode.FULL_TEXT
        else:
            self.mode = RetrievalMode.FULL_TEXT
        return self.mode

    async def for_reply(self, assistant_id: str | None, question: str, reply_id: str) -> Knowledge:
        if assistant_id is None or self.mode is RetrievalMode.OFF:
            return NO_KNOWLEDGE
        try:
            hits = await self._search(assistant_id, question)
            chosen = select_within_budget(hits, self.budget_tokens, self.max_chunks)
            if not chosen:
                return NO_KNOWLEDGE
            sources = retrieval.sources_of(chosen)
            async with driver_connection(self.engine) as connection:
                await retrieval.store_reply_sources(connection, reply_id, sources)
        except Exception as exc:
            log.warning(
                "knowledge lookup failed; answering without it",
                extra={"reply": reply_id, "error": repr(exc)},
            )
            return NO_KNOWLEDGE
        return Knowledge(knowledge_prompt(chosen), sources)

    async def _search(self, assistant_id: str, question: str) -> list[retrieval.Hit]:
        vector = None
        if self.mode is RetrievalMode.HYBRID:
            try:
                (vector,) = await embeddings.embed(self.client, self.embedding_model, [question])
            except openai.OpenAIError as exc:
                log.warning("question not embedded; full text only", extra={"error": repr(exc)})
        async with driver_connection(self.engine) as connection:
            if vector is None:
                return await retrieval.search_full_text(connection, assistant_id, question)
            return await retrieval.search_hybrid(
                connection,
                assistant_id,
                question,
                vector,
                self.embedding_model,
                self.min_similarity,
            )
