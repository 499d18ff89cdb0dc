"""Knowledge files end to end: upload → processed (through the broker and the knowledge
worker) → the right chunks in the model's prompt → the reply names its sources."""

from __future__ import annotations

import asyncio
import json
import os
import time

import aio_pika
import pytest

from shared.topology import Topology
from tests.knowledge import documents
from tests.knowledge.conftest import (
    ask,
    create_assistant,
    knowledge_in,
    prompt_for,
    settled,
    upload,
    uploaded,
)

pytestmark = pytest.mark.e2e

QUILLIUM = "The melting point of quillium is exactly forty two kelvin"
ZORBATEK = "Zorbatek turbines need inspection every nineteen weeks"
FLUMOX = "Flumox crystals glow violet under starlight"
VANTREL = "The vantrel harbour opens at dawn"


def _four_documents() -> list[tuple[str, bytes, int]]:
    """(name, bytes, expected chunks): each topic appears in exactly one file. Paragraphs of
    ~600 characters against 1000-character chunks: one chunk per paragraph."""
    text = documents.paragraph(VANTREL).encode()
    markdown = "\n\n".join(
        [
            "# Turbines",
            documents.paragraph("Turbines hum", seed=1),
            "## Inspection",
            documents.paragraph(ZORBATEK, seed=2),
            documents.paragraph("Blades are long", seed=3),
        ]
    ).encode()
    html = (
        "<!doctype html><html lang='en'><head><title>Crystals</title>"
        "<style>p { color: red }</style></head><body>"
        f"<p>{documents.paragraph(FLUMOX, seed=4)}</p>"
        f"<p>{documents.paragraph('Crystals are hard', seed=5)}</p></body></html>"
    ).encode()
    pdf = documents.pdf(
        [documents.paragraph("Metals are shiny", seed=6), documents.paragraph(QUILLIUM, seed=7)]
    )
    return [
        ("harbour.txt", text, 1),
        ("turbines.md", markdown, 3),
        ("crystals.html", html, 2),
        ("quillium.pdf", pdf, 2),
    ]


async def test_files_are_indexed_and_the_matching_one_reaches_the_prompt(
    http, new_user, mock_llm, kn_infra
):
    user = new_user()
    assistant_id = await create_assistant(http, user)
    files = {}
    for name, data, expected_chunks in _four_documents():
        file = await uploaded(http, user, assistant_id, name, data)
        files[name] = (file, expected_chunks)
    kinds = {name: file["content_type"] for name, (file, _) in files.items()}
    assert kinds == {
        "harbour.txt": "text/plain",
        "turbines.md": "text/markdown",
        "crystals.html": "text/html",
        "quillium.pdf": "application/pdf",
    }
    for name, (file, expected_chunks) in files.items():
        done = await settled(http, user, assistant_id, file["id"])
        assert done["status"] == "processed", done
        assert done["chunk_count"] == expected_chunks, (name, done)
    pdf_id = files["quillium.pdf"][0]["id"]
    assert (await settled(http, user, assistant_id, pdf_id))["page_count"] == 2

    conversation = await http.post(
        "/conversations/", json={"assistant_id": assistant_id}, headers=user.headers
    )
    conversation_id = conversation.json()["id"]

    connection = await aio_pika.connect(kn_infra.amqp_url)
    channel = await connection.channel()
    completed = await channel.declare_queue(exclusive=True, auto_delete=True)
    await completed.bind(Topology(kn_infra.namespace).events.name, "reply.completed")
    question = "What is the melting point of quillium?"
    reply = await ask(http, user, conversation_id, question)
    event = await _event_of(completed, reply["id"])
    await connection.close()
    assert event["sources"] == [{"file_id": pdf_id, "name": "quillium.pdf", "positions": [1]}]
    excerpts = knowledge_in(await prompt_for(mock_llm, question))
    assert excerpts is not None and QUILLIUM in excerpts
    for other in (ZORBATEK, FLUMOX, VANTREL):
        assert other not in excerpts
    assert [(s["file_id"], s["name"]) for s in reply["sources"]] == [(pdf_id, "quillium.pdf")]
    assert reply["sources"][0]["positions"] == [1]  # the second page's chunk

    unrelated = "Tell me about rainbows over mountains"
    reply = await ask(http, user, conversation_id, unrelated)
    assert knowledge_in(await prompt_for(mock_llm, unrelated)) is None
    assert reply["sources"] == []


async def test_types_come_from_the_bytes_and_hostile_files_fail_alone(
    http, new_user, knowledge_worker
):
    user = new_user()
    assistant_id = await create_assistant(http, user)
    for name, data in (
        ("report.pdf", os.urandom(4096)),
        ("photo.pdf", b"\x89PNG\r\n\x1a\n" + os.urandom(1024)),
        ("archive.docx", _plain_zip()),
    ):
        response = await upload(http, user, assistant_id, name, data)
        assert response.status_code == 415, (name, response.text)
        assert "unsupported file type" in response.json()["detail"]

    hostile = {
        "locked.pdf": (documents.encrypted_pdf([documents.paragraph("hidden")]), "encrypted"),
        "scan.pdf": (documents.pdf(["", ""]), "no_text"),
        "huge.pdf": (documents.pdf([""] * 5000), "too_many_pages"),
        "bomb.docx": (documents.zip_bomb_docx(), "decompression_bomb"),
    }
    ids = {}
    for name, (data, _reason) in hostile.items():
        ids[name] = (await uploaded(http, user, assistant_id, name, data))["id"]
    normal = await uploaded(
        http, user, assistant_id, "notes.docx", documents.word_document(["Plain notes here."])
    )
    for name, (_data, reason) in hostile.items():
        file = await settled(http, user, assistant_id, ids[name])
        assert (file["status"], file["failure_reason"]) == ("failed", reason), file
        assert file["failure_message"]
        assert file["chunk_count"] is None
    done = await settled(http, user, assistant_id, normal["id"])
    assert (done["status"], done["chunk_count"]) == ("processed", 1)


async def _event_of(queue, message_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        body = json.loads(message.body)
        if body["message_id"] == message_id:
            return body
    raise TimeoutError(f"no reply.completed for {message_id}")


def _plain_zip() -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "not a word document")
    return out.getvalue()
