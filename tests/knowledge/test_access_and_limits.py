"""Who may touch an assistant's files, what the limits refuse, and what deleting removes."""

from __future__ import annotations

import pytest

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

SECRET = "The glimmerwick vault code is seven seven three"


async def test_another_user_gets_404_on_every_route_and_never_their_chunks(
    http, new_user, mock_llm
):
    owner, stranger = new_user(), new_user()
    assistant_id = await create_assistant(http, owner)
    file = await uploaded(
        http, owner, assistant_id, "vault.txt", documents.paragraph(SECRET).encode()
    )
    assert (await settled(http, owner, assistant_id, file["id"]))["status"] == "processed"

    base = f"/assistants/{assistant_id}/files"
    attempts = [
        ("POST", base),
        ("GET", base),
        ("GET", f"{base}/{file['id']}"),
        ("GET", f"{base}/{file['id']}/content"),
        ("DELETE", f"{base}/{file['id']}"),
    ]
    for method, path in attempts:
        kwargs = {"files": {"file": ("x.txt", b"hello")}} if method == "POST" else {}
        response = await http.request(method, path, headers=stranger.headers, **kwargs)
        assert response.status_code == 404, (method, path, response.text)
    # The stranger's own assistant, asked about the owner's file: nothing of it in the prompt.
    own = await create_assistant(http, stranger)
    conversation = await http.post(
        "/conversations/", json={"assistant_id": own}, headers=stranger.headers
    )
    question = "What is the glimmerwick vault code?"
    reply = await ask(http, stranger, conversation.json()["id"], question)
    assert knowledge_in(await prompt_for(mock_llm, question)) is None
    assert reply["sources"] == []
    # The owner still has it, byte for byte.
    download = await http.get(f"{base}/{file['id']}/content", headers=owner.headers)
    assert download.status_code == 200
    assert download.content == documents.paragraph(SECRET).encode()
    assert "attachment" in download.headers["content-disposition"]


@pytest.fixture(scope="module")
def small_gateway(start_service):
    """A gateway with small limits (same database and broker as the package's stack)."""
    return start_service(
        "gateway",
        instance_id="gw-kn-limits",
        CONVOAI_KNOWLEDGE_MAX_FILE_BYTES="2000",
        CONVOAI_KNOWLEDGE_MAX_FILES_PER_ASSISTANT="2",
        CONVOAI_KNOWLEDGE_MAX_BYTES_PER_USER="3000",
    )


async def test_limits_refuse_before_anything_is_stored(small_gateway, new_user, db):
    import httpx

    user = new_user()
    async with httpx.AsyncClient(base_url=small_gateway.url, timeout=30) as http:
        first, second = await create_assistant(http, user), await create_assistant(http, user)
        too_large = await upload(http, user, first, "big.txt", b"a" * 2001)
        assert too_large.status_code == 413, too_large.text

        async def chunked():
            yield (
                b'--x\r\nContent-Disposition: form-data; name="file"; filename="s.txt"\r\n'
                b"Content-Type: text/plain\r\n\r\n"
            )
            for _ in range(100):
                yield b"b" * 1000
            yield b"\r\n--x--\r\n"

        # No Content-Length: the body is counted as it arrives.
        streamed = await http.post(
            f"/assistants/{first}/files",
            content=chunked(),
            headers={**user.headers, "content-type": "multipart/form-data; boundary=x"},
        )
        assert streamed.status_code == 413, streamed.text

        await uploaded(http, user, first, "one.txt", b"first file " * 90)  # 990 bytes
        await uploaded(http, user, first, "two.txt", b"second file " * 80)  # 960 bytes
        too_many = await upload(http, user, first, "three.txt", b"third")
        assert too_many.status_code == 409, too_many.text
        assert "at most 2" in too_many.json()["detail"]

        over_quota = await upload(http, user, second, "four.txt", b"c" * 1100)
        assert over_quota.status_code == 422, over_quota.text
        assert "quota" in over_quota.json()["detail"]
        fits = await upload(http, user, second, "five.txt", b"d" * 1000)
        assert fits.status_code == 201, fits.text

    names = await db.fetch(
        "SELECT name FROM knowledge.files WHERE owner_id = $1 ORDER BY name", user.user_id
    )
    assert [r["name"] for r in names] == ["five.txt", "one.txt", "two.txt"]
    events = await db.fetchval(
        "SELECT count(*) FROM knowledge.outbox WHERE payload::text LIKE '%' || $1 || '%'",
        user.user_id,
    )
    assert events <= 3  # rows not yet relayed; never one for a refused upload


async def test_deleting_a_file_or_its_assistant_removes_its_chunks_at_once(
    http, new_user, mock_llm, db
):
    user = new_user()
    assistant_id = await create_assistant(http, user)
    file = await uploaded(
        http, user, assistant_id, "vault.txt", documents.paragraph(SECRET).encode()
    )
    assert (await settled(http, user, assistant_id, file["id"]))["status"] == "processed"
    conversation = await http.post(
        "/conversations/", json={"assistant_id": assistant_id}, headers=user.headers
    )
    conversation_id = conversation.json()["id"]
    question = "Which code opens the glimmerwick vault?"
    assert (await ask(http, user, conversation_id, question))["sources"]

    deleted = await http.delete(
        f"/assistants/{assistant_id}/files/{file['id']}", headers=user.headers
    )
    assert deleted.status_code == 204
    assert (
        await db.fetchval("SELECT count(*) FROM knowledge.chunks WHERE file_id = $1", file["id"])
        == 0
    )
    again = "Which code opens the glimmerwick vault, please?"
    reply = await ask(http, user, conversation_id, again)
    assert knowledge_in(await prompt_for(mock_llm, again)) is None
    assert reply["sources"] == []

    other = await uploaded(http, user, assistant_id, "b.txt", b"glimmerwick notes")
    await settled(http, user, assistant_id, other["id"])
    assert (
        await http.delete(f"/assistants/{assistant_id}", headers=user.headers)
    ).status_code == 204
    left = await db.fetchval(
        "SELECT (SELECT count(*) FROM knowledge.files WHERE assistant_id = $1)"
        " + (SELECT count(*) FROM knowledge.chunks WHERE assistant_id = $1)",
        assistant_id,
    )
    assert left == 0
