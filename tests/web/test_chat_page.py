"""The chat page in a real browser (Debian's chromium through Playwright), real model behind it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer, add_user, missing
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS
from townsquare.services import Services

pytestmark = [pytest.mark.browser, pytest.mark.model]


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
    page.click("nav[aria-label=Main] >> text=Assistant")

    page.fill("#prompt", "Hello! What is a good name for a cat?")
    page.click("#send")
    reply = page.locator("li.msg.assistant").last
    expect(reply).to_have_attribute("data-message-id", re.compile(r"\d+"), timeout=30_000)
    text = reply.locator(".body").inner_text().strip()
    expect(reply.locator(".ai")).to_have_text("suggested by AI")
    expect(reply.locator("button[aria-label='Yes, helpful']")).to_be_visible()
    assert text and "error" not in (reply.get_attribute("class") or "")
    expect(page.locator("#conversation-list a")).to_have_count(1)

    page.reload()
    expect(page.locator("li.msg.user")).to_have_text(["Hello! What is a good name for a cat?"])
    expect(page.locator("li.msg.assistant .body")).to_have_text([text])


@pytest.fixture
def scripted_server(tmp_path, real_embed) -> Iterator[tuple[LiveServer, str, object]]:  # type: ignore[no-untyped-def]
    from tests.conftest import _close, make_settings
    from tests.town import build_town
    from townsquare.backends.fake import FakeText

    fake = FakeText()
    services = Services.build(
        make_settings(tmp_path, assistant={"tool_mode": "router"}), text=fake, embed=real_embed
    )
    keys = build_town(services)
    services.indexer.sync_all()
    with LiveServer(services) as server:
        yield server, keys["member"], fake
    _close(services)


def test_replies_render_markdown_safely_with_cards_and_the_cut_note(  # type: ignore[no-untyped-def]
    scripted_server, tmp_path
) -> None:
    if not shutil.which("chromium"):
        missing("Debian's chromium", "`make test` installs it (apt-get install chromium)")
    import httpx
    from playwright.sync_api import expect, sync_playwright

    server, key, fake = scripted_server
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.url, headers=headers) as api:
        cid = api.post("/api/conversations", json={}).json()["id"]
        fake.enqueue("one two three four five six seven")
        cut = api.post(
            f"/api/conversations/{cid}/messages", json={"content": "count", "max_tokens": 3}
        ).json()
        assert cut["reply"]["truncated"] is True
    fake.enqueue(
        "**Bold** tip <script>window.pwned = 1</script> [x](javascript:window.pwned=2)\n\n- one\n- two"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 360, "height": 740})
        page.goto(f"{server.url}/login")
        page.fill("#key", key)
        page.click("button[type=submit]")
        page.goto(f"{server.url}/assistant")
        expect(page.locator("li.msg.assistant .note")).to_contain_text("length limit")

        page.fill("#prompt", "tell me something")
        page.click("#send")
        reply = page.locator("li.msg.assistant").last
        expect(reply.locator("strong")).to_have_text("Bold", timeout=20_000)
        expect(reply.locator("li")).to_have_count(2)
        assert reply.locator("script").count() == 0 and reply.locator("a").count() == 0
        assert "<script>" in reply.inner_text()  # shown as text, never run
        assert page.evaluate("window.pwned") is None

        page.fill("#prompt", "any reels about baking?")
        page.click("#send")
        cards = page.locator("li.msg.assistant").last.locator(".card.reel")
        expect(cards.first).to_be_visible(timeout=20_000)
        # usable on a phone: the input is wide, the page does not scroll sideways
        box = page.locator("#prompt").bounding_box()
        assert box is not None and box["width"] > 200
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        browser.close()
