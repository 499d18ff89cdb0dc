"""The admin side in the browser: dashboard numbers equal the analytics API's, user management
with the last-admin rule, non-admins refused; screenshots and the accessibility check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, expect

from tests.webapp.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, Stack
from tests.webapp.pages import (
    DESKTOP,
    PHONE,
    assistant_messages,
    new_context,
    open_app,
    register,
    send,
    shape_next_reply,
    sign_in,
    sign_up,
    token_of,
    unique,
)

# The first test of the package also waits for the stack to start (STARTUP_TIMEOUT_S).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]

ALL_TIME = [
    "total_users",
    "total_conversations",
    "total_messages",
    "total_tokens",
    "total_api_calls",
    "active_users_today",
]
IN_RANGE = {
    "range_user_messages": "user_messages",
    "range_replies_completed": "replies_completed",
    "range_total_tokens": "total_tokens",
    "range_replies_failed": "replies_failed",
}


SHOWCASE_REPLY = """Use a **context manager**, so the file is closed even on errors:

```python
from pathlib import Path

with Path("notes.txt").open(encoding="utf-8") as f:
    for line in f:
        print(line.rstrip())
```

- `Path.read_text()` reads it whole in one call
- see the [pathlib docs](https://docs.python.org/3/library/pathlib.html)
"""


async def assert_accessible(page: Page, what: str) -> None:
    results = await Axe().run(page)
    serious = [
        f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert serious == [], f"accessibility violations on {what}: {serious}"


async def screenshots(page: Page, artifacts: Path, name: str, height: int = 0) -> None:
    """Desktop and 360 px wide; `height` makes them that tall (pages scroll inside the app)."""
    sizes = [("desktop", DESKTOP), ("360px", PHONE)]
    if height:
        sizes = [(label, {**size, "height": height}) for label, size in sizes]
    for label, viewport in sizes:
        await page.set_viewport_size(viewport)
        await page.screenshot(
            path=str(artifacts / f"{name}-{label}.png"), animations="disabled", full_page=True
        )
    await page.set_viewport_size(DESKTOP)


async def dashboard_numbers(page: Page) -> dict[str, str]:
    numbers: dict[str, str] = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-testid^="stat-"]')]
            .map((el) => [el.dataset.testid.slice(5), el.dataset.value]))"""
    )
    return numbers


async def api_numbers(stack: Stack, token: str) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.analytics.url, headers=headers) as client:
        summary = (await client.get("/api/v1/analytics/summary")).json()
        daily = (await client.get("/api/v1/analytics/daily-stats", params={"days": 7})).json()
    numbers = {key: summary[key] for key in ALL_TIME}
    for shown, column in IN_RANGE.items():
        numbers[shown] = sum(row[column] for row in daily["items"])
    return numbers


def as_number(value: str) -> float:
    return float(value)


async def test_admin_dashboard_shows_the_analytics_api_numbers(
    stack: Stack, browser: Browser, artifacts: Path
) -> None:
    context = await new_context(browser)
    page = await open_app(context, stack)
    await assert_accessible(page, "sign-in")
    await page.screenshot(path=str(artifacts / "sign-in-desktop.png"))

    # Some traffic of a normal user first, so the numbers are not all zero.
    chatter = await open_app(await new_context(browser), stack)
    chatter_name = unique("frank")
    await sign_up(chatter, chatter_name)
    prompt = unique("How do I read a file in Python? ")
    await shape_next_reply(stack, prompt, content=SHOWCASE_REPLY)
    await send(chatter, prompt)
    await expect(assistant_messages(chatter).last).to_have_attribute("data-status", "complete")
    await expect(chatter.get_by_role("link", name="Dashboard", exact=True)).to_have_count(0)
    await assert_accessible(chatter, "chat")
    await screenshots(chatter, artifacts, "chat")
    await chatter.emulate_media(color_scheme="dark")
    await chatter.screenshot(path=str(artifacts / "chat-dark-desktop.png"), animations="disabled")

    await sign_in(page, ADMIN_USERNAME, ADMIN_PASSWORD)
    await page.get_by_role("link", name="Dashboard", exact=True).click()
    await expect(page.get_by_test_id("stat-total_users")).to_be_visible()
    token = await token_of(stack, ADMIN_USERNAME, ADMIN_PASSWORD)

    # Counts move while events arrive (this page's own requests are API calls): compare one
    # refresh of the page with the API read right around it, until both agree.
    async def agree() -> tuple[bool, dict[str, Any], dict[str, str]]:
        before = (await page.get_by_test_id("updated").get_attribute("data-updated")) or ""
        expected = await api_numbers(stack, token)
        await page.get_by_role("button", name="Refresh").click()
        await expect(page.get_by_test_id("updated")).not_to_have_attribute("data-updated", before)
        shown = await dashboard_numbers(page)
        same = all(as_number(shown[k]) == float(v) for k, v in expected.items())
        return same, expected, shown

    for _ in range(10):
        same, expected, shown = await agree()
        if same:
            break
    assert same, f"dashboard {shown} != API {expected}"
    assert float(shown["total_messages"]) >= 2 and float(shown["total_tokens"]) > 0
    await expect(page.get_by_test_id("models")).to_contain_text("gpt-4o-mini")
    await assert_accessible(page, "dashboard")
    await screenshots(page, artifacts, "dashboard", height=2000)

    await page.get_by_role("link", name="Users", exact=True).click()
    row = page.locator(f'tr[data-username="{ADMIN_USERNAME}"]')
    await row.get_by_role("button", name="Deactivate").click()
    await expect(page.get_by_test_id("users-message")).to_contain_text(
        "The last active admin cannot be removed, demoted or deactivated"
    )
    await expect(row.get_by_role("button", name="Deactivate")).to_be_visible()

    other = page.locator(f'tr[data-username="{chatter_name}"]')
    await other.get_by_role("button", name="Deactivate").click()
    await expect(page.get_by_test_id("users-message")).to_have_text(f"{chatter_name}: deactivated.")
    await expect(other.get_by_text("Deactivated")).to_be_visible()
    await other.get_by_role("button", name="Reactivate").click()
    await expect(other.get_by_text("Active", exact=True)).to_be_visible()
    await other.get_by_label(f"Role of {chatter_name}").select_option("manager")
    await expect(page.get_by_test_id("users-message")).to_have_text(
        f"{chatter_name}: role is now manager."
    )
    await page.get_by_label("Search users").fill(chatter_name)
    await expect(page.locator("tbody tr")).to_have_count(1)
    await screenshots(page, artifacts, "users")
    assert page.errors == []  # type: ignore[attr-defined]
    await context.close()


async def test_a_normal_user_gets_no_admin_page_and_the_api_refuses_them(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    username = unique("grace")
    await register(stack, username)
    context = await new_context(browser)
    page = await open_app(context, stack, "#/admin")
    await sign_in(page, username)
    await expect(page.get_by_role("heading", name="Admins only")).to_be_visible()
    await expect(page.get_by_role("link", name="Dashboard", exact=True)).to_have_count(0)
    await expect(page.get_by_role("link", name="Users", exact=True)).to_have_count(0)

    token = await token_of(stack, username)
    headers = {"authorization": f"Bearer {token}"}
    for path in ("/api/v1/analytics/summary", "/users/"):
        answer = await http.get(path, headers=headers)
        assert answer.status_code == 403, (path, answer.status_code, answer.text)
    await context.close()
