"""What a person does in the web app, as Playwright steps the tests share (page objects)."""

from __future__ import annotations

import re
import secrets
from typing import Any

import httpx
from playwright.async_api import Browser, BrowserContext, Page, expect

from services.mock_llm.service import expected_reply
from services.mock_llm.settings import MockLLMSettings
from tests.webapp.conftest import Stack

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}
PASSWORD = "Sunny-day-42"
TIMEOUT_MS = 20_000
# The machine running the suite may be busy: waits are for conditions, with room to spare.
expect.set_options(timeout=TIMEOUT_MS)


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


async def new_context(browser: Browser, viewport: dict[str, int] = DESKTOP) -> BrowserContext:
    context = await browser.new_context(viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    return context


async def open_app(context: BrowserContext, stack: Stack, route: str = "") -> Page:
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(f"{stack.url}/{route}")
    return page


async def sign_up(page: Page, username: str) -> None:
    await page.get_by_role("link", name="Create an account").click()
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Email").fill(f"{username}@example.com")
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_test_id("connection")).to_have_text("Connected")


async def sign_in(page: Page, username: str, password: str = PASSWORD) -> None:
    await page.get_by_label("Username or email").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_test_id("connection")).to_have_text("Connected")


async def register(stack: Stack, username: str) -> None:
    async with httpx.AsyncClient(timeout=15) as client:
        answer = await client.post(
            f"{stack.auth.url}/auth/register",
            json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        )
        answer.raise_for_status()


async def token_of(stack: Stack, username: str, password: str = PASSWORD) -> str:
    async with httpx.AsyncClient(timeout=15) as client:
        answer = await client.post(
            f"{stack.auth.url}/auth/token", data={"username": username, "password": password}
        )
        answer.raise_for_status()
        token: str = answer.json()["access_token"]
        return token


async def shape_next_reply(stack: Stack, match: str, **rule: Any) -> None:
    """A mock_llm rule for the next call whose prompt contains `match` (pace, fault, content)."""
    async with httpx.AsyncClient(timeout=15) as client:
        answer = await client.post(f"{stack.mock_llm.url}/_faults", json={"match": match, **rule})
        answer.raise_for_status()


async def mock_reply_text(stack: Stack, prompt: str) -> str:
    """mock_llm's deterministic reply to `prompt`, from its own function and its live settings."""
    async with httpx.AsyncClient(timeout=15) as client:
        config = (await client.get(f"{stack.mock_llm.url}/_config")).json()
    settings = MockLLMSettings(**config)
    return expected_reply([{"role": "user", "content": prompt}], settings).text


async def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    await box.fill(text)
    await box.press("Enter")


def assistant_messages(page: Page):
    return page.locator('[data-testid="message"][data-role="assistant"]')


def user_messages(page: Page):
    return page.locator('[data-testid="message"][data-role="user"]')


def conversation_id(page: Page) -> str:
    found = re.search(r"#/c/([\w-]+)", page.url)
    assert found, page.url
    return found.group(1)


async def record_reply_text(page: Page) -> None:
    """Start recording every text the last assistant message shows (to see it stream)."""
    await page.evaluate(
        """() => {
          window.__seen = [];
          const box = document.querySelector('[data-testid="messages"]');
          new MutationObserver(() => {
            const all = box.querySelectorAll('[data-role="assistant"] .md');
            if (all.length) {
              const text = all[all.length - 1].textContent;
              if (window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
            }
          }).observe(box, {subtree: true, childList: true, characterData: true});
        }"""
    )


async def recorded_reply_texts(page: Page) -> list[str]:
    seen: list[str] = await page.evaluate("() => window.__seen.map((t) => t.trim())")
    return seen
