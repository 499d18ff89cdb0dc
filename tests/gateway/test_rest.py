"""REST API of the gateway on a real process: conversations, messages, assistants, ownership."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import BrokerLine, next_message

pytestmark = pytest.mark.e2e


async def test_conversation_lifecycle_with_search_filter_and_paging(http, new_user):
    alice = new_user()
    ids = []
    for title in ("Trip to Lisbon", "Tax questions", "lisbon food", "Garden"):
        response = await http.post("/conversations/", json={"title": title}, headers=alice.headers)
        assert response.status_code == 201
        ids.append(response.json()["id"])
    assert all(len(i) == 12 for i in ids)

    listed = (
        await http.get("/conversations/", params={"q": "LISBON"}, headers=alice.headers)
    ).json()
    assert listed["total"] == 2
    assert {c["title"] for c in listed["items"]} == {"Trip to Lisbon", "lisbon food"}

    # "%" is a literal in search, not a wildcard.
    listed = (await http.get("/conversations/", params={"q": "%"}, headers=alice.headers)).json()
    assert listed["total"] == 0

    page = (await http.get("/conversations/", params={"limit": 3}, headers=alice.headers)).json()
    assert (page["total"], len(page["items"])) == (4, 3)
    rest = (
        await http.get("/conversations/", params={"skip": 3, "limit": 3}, headers=alice.headers)
    ).json()
    assert len(rest["items"]) == 1
    assert {c["id"] for c in page["items"] + rest["items"]} == set(ids)

    renamed = await http.patch(
        f"/conversations/{ids[3]}", json={"title": "Vegetable garden"}, headers=alice.headers
    )
    assert renamed.status_code == 200 and renamed.json()["title"] == "Vegetable garden"

    ended = await http.post(f"/conversations/{ids[3]}/end", headers=alice.headers)
    assert ended.json()["status"] == "ended"
    ended_only = (
        await http.get("/conversations/", params={"status": "ended"}, headers=alice.headers)
    ).json()
    assert [c["id"] for c in ended_only["items"]] == [ids[3]]
    refused = await http.post(
        f"/conversations/{ids[3]}/messages", json={"content": "hello?"}, headers=alice.headers
    )
    assert refused.status_code == 409
    assert refused.json()["detail"] == "Conversation has ended"

    assert (await http.delete(f"/conversations/{ids[3]}", headers=alice.headers)).status_code == 204
    assert (await http.get(f"/conversations/{ids[3]}", headers=alice.headers)).status_code == 404


async def test_messages_are_stored_paged_and_counted(http, new_user):
    alice = new_user()
    conversation = (await http.post("/conversations/", json={}, headers=alice.headers)).json()
    assert conversation["title"] == "New conversation"
    cid = conversation["id"]
    sent = []
    for i in range(3):
        response = await http.post(
            f"/conversations/{cid}/messages",
            json={"content": f"message {i}"},
            headers=alice.headers,
        )
        assert response.status_code == 202
        body = response.json()
        assert len(body["message_id"]) == 10 and body["duplicate"] is False
        sent.append(body["message_id"])

    history = (
        await http.get(f"/conversations/{cid}/messages", params={"limit": 2}, headers=alice.headers)
    ).json()
    assert history["total"] == 3
    assert [m["id"] for m in history["items"]] == sent[:2]
    assert [m["content"] for m in history["items"]] == ["message 0", "message 1"]
    assert all(m["role"] == "user" for m in history["items"])

    stats = (await http.get(f"/conversations/{cid}/stats", headers=alice.headers)).json()
    assert stats["message_count"] == 3 and stats["user_messages"] == 3
    assert stats["assistant_messages"] == 0 and stats["total_tokens"] == 0
    assert stats["avg_response_time_ms"] is None


async def test_resent_message_with_same_client_id_is_stored_once(http, new_user):
    alice = new_user()
    cid = (await http.post("/conversations/", json={}, headers=alice.headers)).json()["id"]
    body = {"content": "only once", "client_message_id": "c-1"}
    first = await http.post(f"/conversations/{cid}/messages", json=body, headers=alice.headers)
    again = await http.post(f"/conversations/{cid}/messages", json=body, headers=alice.headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["message_id"] == first.json()["message_id"]
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    history = (await http.get(f"/conversations/{cid}/messages", headers=alice.headers)).json()
    assert history["total"] == 1


async def test_assistant_crud_and_conversation_inherits_its_settings(http, new_user):
    alice = new_user()
    created = await http.post(
        "/assistants/",
        json={
            "name": "Poet",
            "system_prompt": "Answer in verse.",
            "model": "mock-1",
            "temperature": 0.3,
        },
        headers=alice.headers,
    )
    assert created.status_code == 201
    assistant = created.json()
    assert len(assistant["id"]) == 12

    listed = (await http.get("/assistants/", headers=alice.headers)).json()
    assert listed["total"] == 1 and listed["items"][0]["name"] == "Poet"

    updated = await http.patch(
        f"/assistants/{assistant['id']}", json={"temperature": 0.9}, headers=alice.headers
    )
    assert updated.json()["temperature"] == 0.9 and updated.json()["name"] == "Poet"

    conversation = (
        await http.post(
            "/conversations/", json={"assistant_id": assistant["id"]}, headers=alice.headers
        )
    ).json()
    assert conversation["assistant_id"] == assistant["id"]
    assert conversation["system_prompt"] == "Answer in verse."
    assert (conversation["model"], conversation["temperature"]) == ("mock-1", 0.9)

    explicit = (
        await http.post(
            "/conversations/",
            json={"assistant_id": assistant["id"], "system_prompt": "Be brief.", "model": "m2"},
            headers=alice.headers,
        )
    ).json()
    assert (explicit["system_prompt"], explicit["model"]) == ("Be brief.", "m2")

    assert (
        await http.delete(f"/assistants/{assistant['id']}", headers=alice.headers)
    ).status_code == 204
    assert (
        await http.get(f"/assistants/{assistant['id']}", headers=alice.headers)
    ).status_code == 404
    # The conversation outlives its assistant.
    kept = await http.get(f"/conversations/{conversation['id']}", headers=alice.headers)
    assert kept.status_code == 200 and kept.json()["assistant_id"] is None


async def test_another_users_ids_answer_404_on_every_route(http, new_user):
    alice, bob = new_user(), new_user()
    cid = (
        await http.post("/conversations/", json={"title": "private"}, headers=alice.headers)
    ).json()["id"]
    aid = (await http.post("/assistants/", json={"name": "mine"}, headers=alice.headers)).json()[
        "id"
    ]
    routes = [
        ("GET", f"/conversations/{cid}", None),
        ("PATCH", f"/conversations/{cid}", {"title": "stolen"}),
        ("DELETE", f"/conversations/{cid}", None),
        ("POST", f"/conversations/{cid}/end", None),
        ("GET", f"/conversations/{cid}/stats", None),
        ("GET", f"/conversations/{cid}/messages", None),
        ("POST", f"/conversations/{cid}/messages", {"content": "hi"}),
        ("POST", f"/conversations/{cid}/messages?wait=true", {"content": "hi"}),
        ("GET", f"/assistants/{aid}", None),
        ("PATCH", f"/assistants/{aid}", {"name": "stolen"}),
        ("DELETE", f"/assistants/{aid}", None),
        ("POST", "/conversations/", {"assistant_id": aid}),
    ]
    for method, path, body in routes:
        response = await http.request(method, path, json=body, headers=bob.headers)
        assert response.status_code == 404, (method, path, response.text)
        assert "detail" in response.json()
    assert (await http.get("/conversations/", headers=bob.headers)).json()["total"] == 0
    # Nothing of Alice's changed.
    still = (await http.get(f"/conversations/{cid}", headers=alice.headers)).json()
    assert (still["title"], still["status"]) == ("private", "active")
    history = (await http.get(f"/conversations/{cid}/messages", headers=alice.headers)).json()
    assert history["total"] == 0


async def test_bad_requests_get_clear_4xx_errors(http, new_user, gateway):
    alice = new_user()
    assert (await http.get("/conversations/")).status_code == 401
    bad_token = {"Authorization": "Bearer not-a-jwt"}
    assert (await http.get("/conversations/", headers=bad_token)).status_code == 401

    cid = (await http.post("/conversations/", json={}, headers=alice.headers)).json()["id"]
    cases = [
        ("POST", "/conversations/", {"title": "x" * 201}),
        ("POST", "/conversations/", {"title": "ok", "unknown": 1}),
        ("PATCH", f"/conversations/{cid}", {"title": ""}),
        ("POST", f"/conversations/{cid}/messages", {"content": ""}),
        ("POST", f"/conversations/{cid}/messages", {"content": "   "}),
        ("POST", f"/conversations/{cid}/messages", {"content": "x" * 16_001}),
        (
            "POST",
            f"/conversations/{cid}/messages",
            {"content": "hi", "client_message_id": "x" * 65},
        ),
        ("GET", "/conversations/?limit=101", None),
        ("GET", "/conversations/?skip=-1", None),
        ("GET", "/conversations/?status=archived", None),
        ("POST", "/assistants/", {"name": "t", "temperature": 3}),
    ]
    for method, path, body in cases:
        response = await http.request(method, path, json=body, headers=alice.headers)
        assert response.status_code == 422, (method, path, response.text)
        assert response.json()["detail"]
    # Oversized bodies (declared or chunked) are tests/trust/test_hostile_input.py's: at the
    # socket level, where the early 413 cannot race a client still writing its body.
    unknown = await http.get("/conversations/doesnotexist", headers=alice.headers)
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "Conversation not found", "code": "not_found"}


async def test_rest_message_rate_limit_answers_429_with_retry_after(http, new_user):
    alice = new_user()
    cid = (await http.post("/conversations/", json={}, headers=alice.headers)).json()["id"]
    statuses = []
    for i in range(21):
        response = await http.post(
            f"/conversations/{cid}/messages", json={"content": f"m{i}"}, headers=alice.headers
        )
        statuses.append(response.status_code)
    assert statuses[:20] == [202] * 20
    assert statuses[20] == 429
    assert 0 < int(response.headers["Retry-After"]) <= 60
    # Another user is not affected.
    bob = new_user()
    bob_cid = (await http.post("/conversations/", json={}, headers=bob.headers)).json()["id"]
    ok = await http.post(
        f"/conversations/{bob_cid}/messages", json={"content": "hi"}, headers=bob.headers
    )
    assert ok.status_code == 202


async def test_conversation_events_and_message_sent_go_through_the_outbox(
    http, new_user, broker_line: BrokerLine
):
    alice = new_user()
    events = await broker_line.events_queue("#")
    cid = (await http.post("/conversations/", json={"title": "a"}, headers=alice.headers)).json()[
        "id"
    ]
    mid = (
        await http.post(
            f"/conversations/{cid}/messages", json={"content": "hey"}, headers=alice.headers
        )
    ).json()["message_id"]
    await http.patch(f"/conversations/{cid}", json={"title": "b"}, headers=alice.headers)
    await http.post(f"/conversations/{cid}/end", headers=alice.headers)
    await http.delete(f"/conversations/{cid}", headers=alice.headers)

    seen = []
    while len(seen) < 5:
        event = await next_message(events)
        if event.get("conversation_id") == cid:
            seen.append(event)
    assert [e["type"] for e in seen] == [
        "conversation.created",
        "message.sent",
        "conversation.renamed",
        "conversation.ended",
        "conversation.deleted",
    ]
    assert all(e["user_id"] == alice.user_id and e["producer"] == "gateway" for e in seen)
    assert seen[1]["message_id"] == mid and seen[1]["content_length"] == 3
    assert "hey" not in str(seen[1])
