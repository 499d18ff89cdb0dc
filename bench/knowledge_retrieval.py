"""Knowledge retrieval benchmark: 10 000 indexed chunks, then the cost of retrieval per message.

Runs against the local PostgreSQL in a throwaway database. Steps:
1. index `--chunks` chunks (synthetic ~1 000-character passages over a 20 000-word vocabulary)
   in 20 files of one assistant, through the knowledge worker's own insert statement;
2. per user message, run what the chat worker runs before it calls the model
   (`KnowledgeContext.for_reply`: search, choose excerpts within the token budget, store the
   reply's sources) for `--messages` questions (half with matching words, half without);
3. the same in hybrid mode when pgvector is installed: chunk embeddings stored, each question
   embedded through a real mock_llm process's `/v1/embeddings` (the worker's HTTP path).

`retrieval` times step 2/3 alone. `ttft` times what a reply waits for before its first token:
retrieval, then the prompt, then a streamed request to a real mock_llm process until its first
delta — once with the assistant's files (`with_knowledge`) and once for the same question in a
conversation without an assistant (`without`); `extra_p50_ms`/`extra_p95_ms` are the
differences. mock_llm's prefill does not grow with the prompt; a real model's does, by an
amount that depends on the model (`excerpt_tokens_mean` says how many tokens were added).

Prints one JSON object. Not a test: numbers depend on the machine and its load.

    .venv/bin/python bench/knowledge_retrieval.py [--chunks 10000] [--messages 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import asyncpg
import httpx
import openai

from services.chat_worker.knowledge import Knowledge, KnowledgeContext, RetrievalMode
from services.chat_worker.prompt import Turn, build_prompt, estimate_tokens
from services.knowledge import repository
from services.knowledge.chunking import TextChunk
from services.knowledge.embeddings import vector_literal
from services.mock_llm.service import embed_text
from services.registry import MIGRATED_SCHEMAS
from shared.db import asyncpg_dsn, create_engine
from shared.events import FileProcessed
from shared.ids import IdKind, new_id
from shared.migrations import upgrade_to_head
from shared.outbox import StagedEvent

SERVER_URL = os.environ.get(
    "CONVOAI_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
FILES = 20
WARMUP = 20


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        length = rng.randint(2, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(length)))
    return sorted(words)


def _passage(rng: random.Random, vocabulary: list[str], weights: list[float]) -> str:
    words = rng.choices(vocabulary, weights, k=150)
    return " ".join(words)[:1000] + "."


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


async def _seed(
    database_url: str, chunks: int, hybrid: bool, rng: random.Random
) -> tuple[str, list[str], dict[str, Any]]:
    """An assistant with `chunks` indexed chunks; its id, the corpus passages, timings."""
    vocabulary = _vocabulary(rng, 20_000)
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf-like
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    owner = new_id(IdKind.USER)
    assistant_id = new_id(IdKind.ASSISTANT)
    passages: list[str] = []
    started = time.perf_counter()
    try:
        await connection.execute(
            "INSERT INTO chat.assistants (id, owner_id, name, system_prompt)"
            " VALUES ($1, $2, 'bench', '')",
            assistant_id,
            owner,
        )
        per_file = chunks // FILES
        for n in range(FILES):
            file_id = new_id(IdKind.FILE)
            await connection.execute(
                "INSERT INTO knowledge.files (id, assistant_id, owner_id, name, content_type,"
                " size_bytes, sha256, status) VALUES ($1, $2, $3, $4, 'text/plain', 0, '',"
                " 'uploaded')",
                file_id,
                assistant_id,
                owner,
                f"file-{n}.txt",
            )
            texts = [_passage(rng, vocabulary, weights) for _ in range(per_file)]
            passages.extend(texts)
            pending = repository.PendingFile(file_id, assistant_id, owner, "text/plain", "", b"")
            indexed = repository.IndexedText(
                chunks=[TextChunk(i, None, t) for i, t in enumerate(texts)],
                characters=sum(map(len, texts)),
                pages=None,
                language="english",
                embeddings=[vector_literal(embed_text(t)) for t in texts] if hybrid else None,
                embedding_model="mock-embed" if hybrid else None,
            )
            event = StagedEvent.of(
                FileProcessed(
                    producer="bench",
                    file_id=file_id,
                    assistant_id=assistant_id,
                    chunks=per_file,
                    characters=indexed.characters,
                )
            )
            await repository.store_index(connection, pending, indexed, event)
        await connection.execute("ANALYZE knowledge.chunks")
        await connection.execute("ANALYZE knowledge.files")
    finally:
        await connection.close()
    seconds = time.perf_counter() - started
    return assistant_id, passages, {"index_s": round(seconds, 2), "chunks": len(passages)}


async def _replies(database_url: str, assistant_id: str, count: int) -> list[str]:
    """Reply rows the sources can be stored against (a conversation with `count` turns)."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        owner = await connection.fetchval(
            "SELECT owner_id FROM chat.assistants WHERE id = $1", assistant_id
        )
        conversation = new_id(IdKind.CONVERSATION)
        await connection.execute(
            "INSERT INTO chat.conversations (id, owner_id, title, assistant_id, status)"
            " VALUES ($1, $2, 'bench', $3, 'active')",
            conversation,
            owner,
            assistant_id,
        )
        replies = []
        for _ in range(count):
            question, reply = new_id(IdKind.MESSAGE), new_id(IdKind.MESSAGE)
            await connection.execute(
                "INSERT INTO chat.messages (id, conversation_id, role, content, status, seq,"
                " attempt) VALUES ($1, $2, 'user', 'q', 'complete', 0, 1),"
                " ($3, $2, 'assistant', '', 'streaming', 0, 1)",
                question,
                conversation,
                reply,
            )
            await connection.execute(
                "UPDATE chat.messages SET reply_to = $1 WHERE id = $2", question, reply
            )
            replies.append(reply)
        return replies
    finally:
        await connection.close()


def _questions(rng: random.Random, passages: list[str], count: int) -> list[str]:
    questions = []
    for n in range(count):
        if n % 2 == 0:
            words = rng.choice(passages).rstrip(".").split()
            picked = rng.sample(words, 6)
            questions.append("What does the file say about " + " ".join(picked) + "?")
        else:
            questions.append(f"Could you explain quantum zebra number {n} to me?")
    return questions


async def _first_token_ms(
    context: KnowledgeContext,
    model: openai.AsyncOpenAI,
    assistant_id: str | None,
    question: str,
    reply_id: str,
) -> tuple[float, float, Knowledge]:
    """(retrieval ms, time to first token ms, knowledge) of one reply, as the worker does it."""
    started = time.perf_counter()
    knowledge = await context.for_reply(assistant_id, question, reply_id)
    retrieved = time.perf_counter()
    messages = build_prompt("You answer.", [Turn("user", question)], 3000, knowledge.prompt)
    stream = await model.chat.completions.create(
        model="mock-gpt",
        messages=messages,
        stream=True,  # type: ignore[arg-type]
    )
    first = None
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    assert first is not None
    return (retrieved - started) * 1000, (first - started) * 1000, knowledge


async def _measure(
    context: KnowledgeContext,
    model: openai.AsyncOpenAI,
    assistant_id: str,
    questions: list[str],
    replies: list[str],
) -> dict[str, Any]:
    retrieval: list[float] = []
    with_knowledge: list[float] = []
    without: list[float] = []
    tokens: list[int] = []
    with_sources = 0
    for index, (question, reply_id) in enumerate(zip(questions, replies, strict=True)):
        spent, ttft, knowledge = await _first_token_ms(
            context, model, assistant_id, question, reply_id
        )
        _, plain_ttft, _ = await _first_token_ms(context, model, None, question, reply_id)
        if index < WARMUP:
            continue
        retrieval.append(spent)
        with_knowledge.append(ttft)
        without.append(plain_ttft)
        tokens.append(estimate_tokens(knowledge.prompt) if knowledge.prompt else 0)
        with_sources += bool(knowledge.sources)
    loaded, plain = _percentiles(with_knowledge), _percentiles(without)
    return {
        "messages": len(retrieval),
        "retrieval": _percentiles(retrieval),
        "ttft": {
            "with_knowledge": loaded,
            "without": plain,
            "extra_p50_ms": round(loaded["p50_ms"] - plain["p50_ms"], 2),
            "extra_p95_ms": round(loaded["p95_ms"] - plain["p95_ms"], 2),
        },
        "messages_with_excerpts": with_sources,
        "excerpt_tokens_mean": round(statistics.fmean(tokens), 1),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(15)
    name = f"convoai_bench_knowledge_{secrets.token_hex(4)}"
    database_url = (
        SERVER_URL.rsplit("/", 1)[0] + f"/{name}"
    )  # the server's URL with this run's database
    await upgrade_to_head(database_url, MIGRATED_SCHEMAS)
    engine = create_engine(database_url, pool_size=4)
    mock: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {"chunks": args.chunks, "budget_tokens": args.budget}
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            hybrid_available = await repository.embeddings_column_exists(raw.driver_connection)
        assistant_id, passages, seeded = await _seed(
            database_url, args.chunks, hybrid_available, rng
        )
        result["indexing"] = seeded
        questions = _questions(rng, passages, args.messages + WARMUP)
        port = _free_port()
        mock = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "mock_llm", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(600):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        model = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0
        )
        context = KnowledgeContext(
            engine=engine,
            client=model,
            budget_tokens=args.budget,
            max_chunks=6,
            embedding_model="",
            min_similarity=0.1,
        )
        await context.detect_mode()
        replies = await _replies(database_url, assistant_id, len(questions))
        result["full_text"] = await _measure(context, model, assistant_id, questions, replies)
        if hybrid_available:
            context.embedding_model = "mock-embed"
            assert await context.detect_mode() is RetrievalMode.HYBRID
            result["hybrid"] = await _measure(context, model, assistant_id, questions, replies)
        else:
            result["hybrid"] = "pgvector not installed"
    finally:
        if mock is not None:
            mock.terminate()
            mock.wait()
        await engine.dispose()
        admin = await asyncpg.connect(asyncpg_dsn(SERVER_URL, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--chunks", type=int, default=10_000, help="chunks to index")
    parser.add_argument("--messages", type=int, default=300, help="measured messages per mode")
    parser.add_argument("--budget", type=int, default=1200, help="excerpt token budget")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
