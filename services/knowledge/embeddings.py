"""Embeddings through the OpenAI-compatible `/v1/embeddings`, as pgvector literals."""

from __future__ import annotations

from collections.abc import Sequence

import openai

BATCH_SIZE = 64


def vector_literal(values: Sequence[float]) -> str:
    """pgvector's text form; passed as text and cast in SQL, so no client adapter is needed."""
    return "[" + ",".join(f"{v:.7g}" for v in values) + "]"


async def embed(client: openai.AsyncOpenAI, model: str, texts: Sequence[str]) -> list[str]:
    """One pgvector literal per text, in order."""
    vectors: list[str] = []
    for start in range(0, len(texts), BATCH_SIZE):
        batch = list(texts[start : start + BATCH_SIZE])
        response = await client.embeddings.create(model=model, input=batch)
        ordered = sorted(response.data, key=lambda d: d.index)
        vectors.extend(vector_literal(d.embedding) for d in ordered)
    return vectors
