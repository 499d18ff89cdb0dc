"""Chat in the browser: sign-up, a streamed reply equal to mock_llm's, reload, stop, failure
and retry, a cut socket, two tabs, and a hostile reply that must execute nothing."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.async_api import Browser, WebSocketRoute, expect

from tests.webapp.conftest import Stack
from tests.webapp.pages import (
    assistant_messages,
    conversation_id,
    mock_reply_text,
    new_context,
    open_app,
    record_reply_text,
    recorded_reply_texts,
    send,
    shape_next_reply,
    sign_in,
    sign_up,
    token_of,
    unique,
    user_messages,
)

# The first test of the package also waits for the stack to start (STARTUP_TIMEOUT_S).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]


async def test_fields_filled_in_one_go_all_keep_their_values(
    stack: Stack, browser: Browser
) -> None:
    # Autofill and password managers fill several fields before the form renders again. Each
    # field's update must start from the latest form, not the one of the last render (a stale
    # copy wiped the username and made sign-up fail at random).
    context = await new_context(browser)
    page = await open_app(context, stack, "#/signup")
    await expect(page.get_by_label("Username")).to_be_visible()
    await page.evaluate(
        """() => {
            for (const [name, value] of [["username", "both-kept"], ["email", "b@example.com"]]) {
                const input = document.querySelector(`input[name=${name}]`);
                input.value = value;
                input.dispatchEvent(new Event("input", { bubbles: true }));
            }
        }"""
    )
    await page.get_by_label("Password", exact=True).fill("x")  # one more render
    await expect(page.get_by_label("Username")).to_have_value("both-kept")
    await expect(page.get_by_label("Email")).to_have_value("b@example.com")
    await context.close()


async def test_sign_up_chat_streams_the_mock_reply_and_survives_a_reload(
    stack: Stack, browser: Browser
) -> None:
    context = await new_context(browser)
    page = await open_app(context, stack)
    await sign_up(page, unique("alice"))
    await expect(page.get_by_text("No conversations yet")).to_be_visible()

    prompt = unique("Tell me about streams ")
    expected = await mock_reply_text(stack, prompt)
    # Paced, so the page has time to show it growing word by word.
    await shape_next_reply(stack, prompt, tokens_per_second=12)
    await record_reply_text(page)
    await send(page, prompt)

    reply = assistant_messages(page).last
    await expect(reply).to_have_attribute("data-status", "complete")
    await expect(reply.locator(".md")).to_have_text(expected)
    seen = await recorded_reply_texts(page)
    assert len(seen) >= 6, f"the reply did not stream token by token: {seen}"
    assert all(expected.startswith(text) for text in seen), seen
    assert seen[-1] == expected

    await page.reload()
    await expect(page.get_by_test_id("connection")).to_have_text("Connected")
    await expect(user_messages(page)).to_have_count(1)
    await expect(user_messages(page).first).to_contain_text(prompt)
    await expect(assistant_messages(page)).to_have_count(1)
    await expect(assistant_messages(page).first.locator(".md")).to_have_text(expected)
    await expect(page.locator(".conv-list a.active")).to_contain_text(prompt[:20])
    assert conversation_id(page)
    assert page.errors == []  # type: ignore[attr-defined]
    await context.close()


async def test_stop_marks_the_partial_reply_stopped_and_a_failed_reply_retries(
    stack: Stack, browser: Browser
) -> None:
    context = await new_context(browser)
    page = await open_app(context, stack)
    await sign_up(page, unique("bob"))

    slow = unique("Write a long answer ")
    expected = await mock_reply_text(stack, slow)
    await shape_next_reply(stack, slow, tokens_per_second=4)
    await send(page, slow)
    reply = assistant_messages(page).last
    await expect(reply.locator(".md")).to_contain_text(" ".join(expected.split()[:2]))
    await page.keyboard.press("Escape")
    await expect(reply).to_have_attribute("data-status", "cancelled")
    await expect(reply.get_by_text("Stopped")).to_be_visible()
    partial = (await reply.locator(".md").text_content() or "").strip()
    assert partial and expected.startswith(partial) and partial != expected

    failing = unique("This one fails ")
    await shape_next_reply(stack, failing, status=400)
    await send(page, failing)
    failed = assistant_messages(page).last
    await expect(failed).to_have_attribute("data-status", "failed")
    await expect(failed.get_by_role("alert")).to_contain_text("The model refused the request.")
    await failed.get_by_role("button", name="Retry").click()
    await expect(failed.get_by_role("button", name="Retry")).to_have_count(0)
    retried = assistant_messages(page).last
    await expect(retried).to_have_attribute("data-status", "complete")
    await expect(retried.locator(".md")).to_have_text(await mock_reply_text(stack, failing))
    assert page.errors == []  # type: ignore[attr-defined]
    await context.close()


async def test_a_cut_socket_resumes_the_reply_once_and_sends_a_queued_message_once(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    context = await new_context(browser)
    page = await open_app(context, stack)
    username = unique("carol")
    # The socket goes through this route, so the test can cut it and refuse reconnects.
    sockets: list[tuple[WebSocketRoute, WebSocketRoute]] = []
    refusing = False

    async def route(ws: WebSocketRoute) -> None:
        if refusing:
            await ws.close(code=4000, reason="network down")
            return
        sockets.append((ws, ws.connect_to_server()))

    await page.route_web_socket(re.compile(r"/ws$"), route)
    await sign_up(page, username)

    prompt = unique("Explain reconnects ")
    expected = await mock_reply_text(stack, prompt)
    await shape_next_reply(stack, prompt, tokens_per_second=6)
    await send(page, prompt)
    reply = assistant_messages(page).last
    await expect(reply.locator(".md")).to_contain_text(" ".join(expected.split()[:3]))
    await expect(reply).to_have_attribute("data-status", "streaming")

    async def cut() -> None:
        page_side, server_side = sockets[-1]
        await server_side.close()
        await page_side.close(code=4000, reason="cut")

    opened = len(sockets)
    await cut()
    await expect(page.get_by_test_id("connection")).to_have_text("Connected")
    assert len(sockets) > opened, "the page did not open a new socket"
    await expect(reply).to_have_attribute("data-status", "complete")
    await expect(assistant_messages(page)).to_have_count(1)
    await expect(reply.locator(".md")).to_have_text(expected)

    refusing = True
    await cut()
    await expect(page.get_by_test_id("connection")).to_have_text("Reconnecting…")
    queued = unique("Sent while offline ")
    await send(page, queued)
    await expect(user_messages(page).last).to_have_attribute("data-status", "queued")
    refusing = False
    await expect(page.get_by_test_id("connection")).to_have_text("Connected", timeout=30_000)
    await expect(assistant_messages(page)).to_have_count(2)
    await expect(assistant_messages(page).last).to_have_attribute("data-status", "complete")
    await expect(assistant_messages(page).last.locator(".md")).to_have_text(
        await mock_reply_text(stack, queued)
    )
    await expect(user_messages(page)).to_have_count(2)

    token = await token_of(stack, username)
    stored = await http.get(
        f"/conversations/{conversation_id(page)}/messages",
        params={"limit": 100},
        headers={"authorization": f"Bearer {token}"},
    )
    contents = [m["content"] for m in stored.json()["items"] if m["role"] == "user"]
    assert sorted(contents) == sorted([prompt, queued]), contents
    assert page.errors == []  # type: ignore[attr-defined]
    await context.close()


async def test_two_tabs_on_one_conversation_both_show_the_reply_live(
    stack: Stack, browser: Browser
) -> None:
    context = await new_context(browser)
    first = await open_app(context, stack)
    await sign_up(first, unique("dave"))
    opener = unique("Hello there ")
    await send(first, opener)
    await expect(assistant_messages(first).last).to_have_attribute("data-status", "complete")

    # The second tab shares the browser's session cookie, as a real second tab does.
    second = await open_app(context, stack, f"#/c/{conversation_id(first)}")
    await expect(second.get_by_test_id("connection")).to_have_text("Connected")
    await expect(assistant_messages(second)).to_have_count(1)

    prompt = unique("Both tabs watch this ")
    expected = await mock_reply_text(stack, prompt)
    await shape_next_reply(stack, prompt, tokens_per_second=5)
    await send(first, prompt)
    for page in (first, second):
        live = assistant_messages(page).nth(1)
        await expect(live).to_have_attribute("data-status", "streaming")
        await expect(live.locator(".md")).to_contain_text(" ".join(expected.split()[:2]))
    for page in (first, second):
        await expect(assistant_messages(page).nth(1)).to_have_attribute("data-status", "complete")
        await expect(assistant_messages(page).nth(1).locator(".md")).to_have_text(expected)
        await expect(user_messages(page)).to_have_count(2)
        assert page.errors == []  # type: ignore[attr-defined]
    await context.close()


XSS_REPLY = (
    'Look: <img src=x onerror="window.__xss=1;alert(1)"> and <script>window.__xss=2</script> '
    'and [a link](javascript:alert(3)) and <a href="javascript:alert(4)">another</a> '
    "and <svg onload=alert(5)></svg> **bold**"
)


async def test_a_hostile_reply_is_shown_as_text_and_executes_nothing(
    stack: Stack, browser: Browser
) -> None:
    context = await new_context(browser)
    page = await open_app(context, stack)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    await sign_up(page, unique("eve"))

    prompt = unique("Say something nasty ")
    await shape_next_reply(stack, prompt, content=XSS_REPLY)
    await send(page, f"{prompt} <img src=y onerror=alert(6)>")
    reply = assistant_messages(page).last
    await expect(reply).to_have_attribute("data-status", "complete")
    body = reply.locator(".md")
    await expect(body).to_contain_text('<img src=x onerror="window.__xss=1;alert(1)">')
    await expect(body).to_contain_text("<script>window.__xss=2</script>")
    await expect(body.locator("strong")).to_have_text("bold")
    await expect(body).to_contain_text("a link")
    messages = page.get_by_test_id("messages")
    assert await messages.locator("img, script, svg, iframe, [onerror], [onload]").count() == 0
    assert await messages.locator('a[href^="javascript"]').count() == 0
    await expect(user_messages(page).last).to_contain_text("<img src=y onerror=alert(6)>")
    assert await page.evaluate("() => window.__xss") is None
    assert dialogs == []
    assert page.errors == []  # type: ignore[attr-defined]
    await context.close()


CODE_REPLY = "Here you go:\n\n```sh\necho copied-from-the-reply\n```\n"


async def test_assistants_sidebar_and_code_copy(stack: Stack, browser: Browser) -> None:
    context = await new_context(browser)
    await context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = await open_app(context, stack)
    await sign_up(page, unique("ivan"))

    await page.get_by_role("link", name="Assistants", exact=True).click()
    await expect(page.get_by_text("No assistants yet.")).to_be_visible()
    await page.get_by_role("button", name="New assistant").click()
    await page.get_by_label("Name").fill("Shell helper")
    await page.get_by_label("System prompt").fill("You answer with shell commands.")
    await page.get_by_label("Model").fill("mock-shell")
    await page.get_by_label("Temperature").fill("0.2")
    await page.get_by_role("button", name="Save assistant").click()
    card = page.locator("article.assistant", has_text="Shell helper")
    await expect(card).to_contain_text("mock-shell · temperature 0.2")
    await card.get_by_role("button", name="Start chat").click()
    await expect(page.get_by_test_id("model-in-use")).to_contain_text("Shell helper")
    await expect(page.get_by_test_id("model-in-use")).to_contain_text("mock-shell")

    prompt = unique("How do I print? ")
    await shape_next_reply(stack, prompt, content=CODE_REPLY)
    await send(page, prompt)
    reply = assistant_messages(page).last
    await expect(reply).to_have_attribute("data-status", "complete")
    await expect(reply.locator(".msg-meta")).to_have_text("mock-shell")
    await reply.get_by_role("button", name="Copy").click()
    await expect(reply.get_by_role("button", name="Copied")).to_be_visible()
    assert await page.evaluate("() => navigator.clipboard.readText()") == (
        "echo copied-from-the-reply"
    )

    # Sidebar: rename, search, end, delete with confirmation.
    await page.get_by_role("button", name="Rename").click()
    await page.get_by_label("Conversation title").fill("Printing in the shell")
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator(".conv-list a.active")).to_contain_text("Printing in the shell")
    await page.get_by_label("Search conversations").fill("no such words")
    await expect(page.get_by_text("No conversation matches your search.")).to_be_visible()
    await page.get_by_label("Search conversations").fill("Printing")
    await expect(page.locator(".conv-list li")).to_have_count(1)
    await page.get_by_role("button", name="End", exact=True).click()
    await expect(page.locator(".conv-list a.active .badge")).to_have_text("Ended")
    await expect(page.get_by_label("Message", exact=True)).to_be_disabled()
    await page.get_by_role("button", name="Delete", exact=True).click()
    dialog = page.get_by_role("alertdialog", name="Confirm delete")
    await expect(dialog).to_contain_text("Printing in the shell")
    await dialog.get_by_role("button", name="Delete").click()
    await page.get_by_label("Search conversations").fill("")
    await expect(page.get_by_text("No conversations yet")).to_be_visible()
    assert page.errors == []  # type: ignore[attr-defined]
    await context.close()


async def test_an_ended_session_returns_to_sign_in_and_keeps_the_draft(
    stack: Stack, browser: Browser
) -> None:
    context = await new_context(browser)
    page = await open_app(context, stack)
    username = unique("judy")
    await sign_up(page, username)
    await send(page, unique("First message "))
    await expect(assistant_messages(page).last).to_have_attribute("data-status", "complete")
    draft = "A long thought I have not sent yet,\nover two lines"
    await page.get_by_label("Message", exact=True).fill(draft)

    # The refresh cookie is gone (expired, or cleared): the next load has no session.
    await context.clear_cookies()
    await page.reload()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await sign_in(page, username)
    await expect(page.get_by_label("Message", exact=True)).to_have_value(draft)
    await expect(assistant_messages(page)).to_have_count(1)
    assert page.errors == []  # type: ignore[attr-defined]
    await context.close()
