"""Take the README's screenshots: pages in headless Chromium, after a burst.

    make screenshots    (or: .venv/bin/python -m testbed.screenshots docs)

Step 2 and step 3 run under ``flask run`` on the same small pool, and each
page sends the same burst of requests: step 2 answers 503s and keeps its
connections checked out; step 3 serves every request.
"""

import json
import pathlib
import sys
import tempfile

from playwright.sync_api import sync_playwright

from .chromium import HOW_TO_GET_CHROMIUM
from .chromium import find_chromium
from .chromium import launch
from .live_server import LiveServer

# Two connections, no overflow, and a request that finds none free within a
# second answers 503.
SMALL_POOL_FAILING_FAST = {"pool_size": 2, "max_overflow": 0, "pool_timeout": 1}

SCREENSHOTS = {
    "step02_session": "step02-burst.png",
    "step03_teardown": "step03-burst.png",
}


def wait_for_samples(page, count):
    """Wait until the panel's chart holds this many samples of /pool."""
    page.wait_for_function(
        f"document.getElementById('pool-chart').dataset.samples >= {count}"
    )


def burst_and_wait(page, server, count=20, let_pass=None):
    """Open a step's page, send a burst of requests, and let the panel catch up.

    ``let_pass(milliseconds)`` lets time pass on the page: by default it
    waits; the browser tests move the page's clock on instead.
    """
    let_pass = let_pass or page.wait_for_timeout
    page.goto(server.url + "/")
    let_pass(2000)
    wait_for_samples(page, 3)
    page.fill('#burst input[name="count"]', str(count))
    page.click("#burst button")
    page.wait_for_selector("#burst-result[data-ok]", timeout=60_000)
    # A few more samples, so the chart shows what followed the burst.
    let_pass(3000)
    wait_for_samples(page, 6)


def take_screenshots(folder, browser):
    """Write the README's screenshots into ``folder``; return their paths."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with tempfile.TemporaryDirectory() as work:
        for step, name in SCREENSHOTS.items():
            server = LiveServer(
                step,
                {
                    "DATABASE_URL": f"sqlite:///{work}/{step}.sqlite",
                    "AUDIT_DATABASE_URL": f"sqlite:///{work}/{step}-audit.sqlite",
                    "FLASK_ENGINE_OPTIONS": json.dumps(SMALL_POOL_FAILING_FAST),
                },
                pathlib.Path(work) / f"{step}.log",
            )
            page = browser.new_page(viewport={"width": 900, "height": 900})
            try:
                burst_and_wait(page, server)
                page.screenshot(path=folder / name, full_page=True)
            finally:
                page.close()
                server.stop()
            paths.append(folder / name)
    return paths


def main(folder):
    """Take the screenshots with a Chromium of their own."""
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit(HOW_TO_GET_CHROMIUM)
    with sync_playwright() as driver:
        browser = launch(driver, chromium)
        try:
            return take_screenshots(folder, browser)
        finally:
            browser.close()


if __name__ == "__main__":
    for path in main(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"):
        print(path)
