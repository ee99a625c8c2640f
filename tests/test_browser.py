"""The page works in a real browser: the pool panel refreshes, the form adds."""

import os
import shutil

import pytest

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Start a headless Chromium for the module's tests."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        reason = "needs Chromium: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=chromium,
            headless=True,
            # The sandbox needs an unprivileged user; CI runs as root.
            chromium_sandbox=False,
            args=CHROMIUM_FLAGS,
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """Open a new browser page."""
    context = browser.new_context()
    yield context.new_page()
    context.close()


def test_the_pool_panel_shows_pool_and_refreshes_every_second(step, serve, page):
    server = serve(step)
    pool_requests = []
    page.on(
        "request",
        lambda request: (
            pool_requests.append(request) if request.url.endswith("/pool") else None
        ),
    )

    page.goto(server.url + "/")
    cell = page.locator('[data-pool="connects"]')
    playwright.expect(cell).to_have_text("1")
    page.wait_for_timeout(2500)

    status = server.get("/pool").json()
    for key in ("pool_class", "size", "pid", "url"):
        cell = page.locator(f'[data-pool="{key}"]')
        playwright.expect(cell).to_have_text(str(status[key]))
    # One request on load, then one a second.
    assert len(pool_requests) >= 3


def test_the_form_adds_a_message_and_shows_errors(step, serve, page):
    server = serve(step)
    page.goto(server.url + "/")
    playwright.expect(page.locator("#no-messages")).to_be_visible()

    page.fill('input[name="text"]', "typed in a browser")
    page.click("text=Add")

    playwright.expect(page.locator("#messages li")).to_have_text(["typed in a browser"])
    assert server.get("/messages").json()[0]["text"] == "typed in a browser"

    # A NUL character passes the browser's checks; the server refuses it.
    page.fill('input[name="text"]', "a\x00b")
    page.click("text=Add")
    playwright.expect(page.locator("#form-error")).to_contain_text("NUL")
    assert len(server.get("/messages").json()) == 1
