"""The chat page in a real browser (Debian's chromium through Playwright), real model behind it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer, add_user, missing
from townsquare.services import Services

pytestmark = [pytest.mark.browser, pytest.mark.model]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def page(live_server: tuple[LiveServer, str]) -> Iterator[object]:
    if not shutil.which("chromium"):
        missing("Debian's chromium", "`make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        yield context.new_page()
        context.close()
        browser.close()


def test_login_chat_stream_and_reload(page, live_server: tuple[LiveServer, str]) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    server, _ = live_server
    services: Services = server.services
    key = add_user(services, "browser-mia")

    page.goto(f"{server.url}/")
    expect(page).to_have_url(f"{server.url}/login")
    page.fill("#key", "ts_not-a-key")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("not valid")

    page.fill("#key", key)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{server.url}/")
    expect(page.locator(".who")).to_contain_text("browser-mia")

    page.fill("#prompt", "Hello! What is a good name for a cat?")
    page.click("#send")
    reply = page.locator("li.msg.assistant").last
    expect(reply).to_have_attribute("data-message-id", re.compile(r"\d+"), timeout=30_000)
    text = reply.inner_text().strip()
    assert text and "error" not in (reply.get_attribute("class") or "")
    expect(page.locator("#conversation-list a")).to_have_count(1)

    page.reload()
    expect(page.locator("li.msg.user")).to_have_text(["Hello! What is a good name for a cat?"])
    expect(page.locator("li.msg.assistant")).to_have_text([text])
