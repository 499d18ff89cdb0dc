"""Chat in the browser: sign-up, a streamed reply equal to mock_llm's, reload, stop, failure
and retry, a cut socket, two tabs, and a hostile reply that must execute nothing."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

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
    sign_up,
    unique,
    user_messages,
)

pytestmark = pytest.mark.e2e


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
