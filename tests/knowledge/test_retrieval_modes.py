"""Full-text retrieval (always) and hybrid retrieval (pgvector + an embeddings model), and a
knowledge worker killed mid-extraction."""

from __future__ import annotations

import asyncio
import json

import aio_pika
import httpx
import pytest

from shared.broker import delete_topology
from shared.topology import Topology
from tests.knowledge import documents
from tests.knowledge.conftest import (
    ask,
    create_assistant,
    knowledge_in,
    prompt_for,
    settled,
    uploaded,
)
from tests.processes import ServiceProcess, wait_until

pytestmark = pytest.mark.e2e

FACT = "Ostrander lighthouse keepers log the tide every ninety minutes"


async def _embedding_requests(mock) -> int:
    async with httpx.AsyncClient(base_url=mock.url) as client:
        return (await client.get("/_stats")).json()["embedding_requests"]


async def test_full_text_only_without_an_embeddings_model(
    http, new_user, mock_llm, chat_worker, knowledge_worker
):
    ready = httpx.get(f"{chat_worker.url}/ready").json()
    assert ready["details"]["knowledge_retrieval"] == "full_text"
    user = new_user()
    assistant_id = await create_assistant(http, user)
    file = await uploaded(http, user, assistant_id, "tides.txt", documents.paragraph(FACT).encode())
    assert (await settled(http, user, assistant_id, file["id"]))["status"] == "processed"
    before = await _embedding_requests(mock_llm)
    conversation = await http.post(
        "/conversations/", json={"assistant_id": assistant_id}, headers=user.headers
    )
    question = "How often do lighthouse keepers log the tide?"
    reply = await ask(http, user, conversation.json()["id"], question)
    assert FACT in (knowledge_in(await prompt_for(mock_llm, question)) or "")
    assert reply["sources"][0]["file_id"] == file["id"]
    assert await _embedding_requests(mock_llm) == before


async def _pgvector_available(db) -> bool:
    return bool(await db.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"))


@pytest.fixture(scope="module")
async def hybrid_stack(infra, mock_llm, knowledge_env):
    """Gateway, chat worker and knowledge worker with an embeddings model, in a namespace of
    their own (the package's full-text workers must not take its requests)."""
    namespace = f"{infra.namespace}hy"
    embedding = {
        "CONVOAI_NAMESPACE": namespace,
        "CONVOAI_LLM_BASE_URL": f"{mock_llm.url}/v1",
        "CONVOAI_EMBEDDING_MODEL": "mock-embed",
    }
    processes = []
    try:
        for service, env in (
            ("gateway", {}),
            ("chat_worker", {"CONVOAI_KNOWLEDGE_MIN_SIMILARITY": "0.1"}),
            ("knowledge_worker", knowledge_env),
        ):
            process = ServiceProcess(service, infra.env(**embedding, **env))
            processes.append(process)
            process.start()
        yield processes
    finally:
        for process in reversed(processes):
            process.stop()
        await delete_topology(infra.amqp_url, Topology(namespace))


async def test_hybrid_ranking_with_pgvector_and_embeddings(hybrid_stack, mock_llm, new_user, db):
    if not await _pgvector_available(db):
        pytest.skip("the PostgreSQL server has no pgvector (postgresql-NN-pgvector)")
    gateway, hybrid_worker, _indexer = hybrid_stack
    assert httpx.get(f"{hybrid_worker.url}/ready").json()["details"] == {
        "knowledge_retrieval": "hybrid"
    }
    user = new_user()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        assistant_id = await create_assistant(http, user)
        file = await uploaded(
            http, user, assistant_id, "tides.txt", documents.paragraph(FACT).encode()
        )
        assert (await settled(http, user, assistant_id, file["id"]))["status"] == "processed"
        embedded = await db.fetchval(
            "SELECT count(*) FROM knowledge.chunks WHERE file_id = $1 AND embedding IS NOT NULL"
            " AND embedding_model = 'mock-embed'",
            file["id"],
        )
        assert embedded == 1
        before = await _embedding_requests(mock_llm)
        conversation = await http.post(
            "/conversations/", json={"assistant_id": assistant_id}, headers=user.headers
        )
        question = "How often do lighthouse keepers log the tide?"
        reply = await ask(http, user, conversation.json()["id"], question)
        assert FACT in (knowledge_in(await prompt_for(mock_llm, question)) or "")
        assert reply["sources"][0]["file_id"] == file["id"]
        assert await _embedding_requests(mock_llm) > before


async def test_a_worker_killed_mid_extraction_indexes_the_file_once_after_restart(
    http, new_user, knowledge_workers, start_knowledge_worker, kn_infra, db
):
    for worker in knowledge_workers:
        worker.stop()
    slow = start_knowledge_worker(CONVOAI_KNOWLEDGE_MAX_PAGES="5000")
    connection = await aio_pika.connect(kn_infra.amqp_url)
    channel = await connection.channel()
    events = await channel.declare_queue(exclusive=True, auto_delete=True)
    await events.bind(Topology(kn_infra.namespace).events.name, "file.*")
    try:
        user = new_user()
        assistant_id = await create_assistant(http, user)
        pages = [documents.paragraph(f"Page {n} of the almanac", seed=n) for n in range(1500)]
        file = await uploaded(http, user, assistant_id, "almanac.pdf", documents.pdf(pages))
        wait_until(
            lambda: f"msg=extracting file={file['id']}" in slow.logs(),
            timeout_s=30,
            message="extraction never started",
        )
        slow.kill()
        response = await http.get(
            f"/assistants/{assistant_id}/files/{file['id']}", headers=user.headers
        )
        assert response.json()["status"] == "uploaded"  # killed before it finished

        start_knowledge_worker(CONVOAI_KNOWLEDGE_MAX_PAGES="5000")
        done = await settled(http, user, assistant_id, file["id"], timeout_s=120)
        assert done["status"] == "processed", done
        rows = await db.fetch(
            "SELECT position FROM knowledge.chunks WHERE file_id = $1 ORDER BY position",
            file["id"],
        )
        assert [r["position"] for r in rows] == list(range(done["chunk_count"]))
        assert done["chunk_count"] >= 1500
        seen = []
        while True:
            message = await events.get(no_ack=True, fail=False)
            if message is None:
                if seen.count("file.processed") == 1:
                    break
                await asyncio.sleep(0.1)
                continue
            body = json.loads(message.body)
            if body.get("file_id") == file["id"]:
                seen.append(body["type"])
        assert seen.count("file.uploaded") == 1
        assert seen.count("file.processed") == 1
        assert "file.failed" not in seen
    finally:
        await connection.close()
