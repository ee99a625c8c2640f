"""Each page works as a small lab in a real browser: panel, chart, burst, errors."""

import datetime
import importlib
import json
import os
import threading
import time
import types

import pytest
from sqlalchemy import event
from werkzeug.serving import make_server

from testbed import ROOT
from testbed.chromium import HOW_TO_GET_CHROMIUM
from testbed.chromium import find_chromium
from testbed.chromium import launch
from testbed.loopback import free_port
from testbed.screenshots import SCREENSHOTS
from testbed.screenshots import SMALL_POOL_FAILING_FAST
from testbed.screenshots import burst_and_wait
from testbed.screenshots import take_screenshots
from testbed.screenshots import wait_for_samples
from testbed.step_apps import close_app
from testbed.step_apps import initialize_databases

# Each test drives Chromium against a step served by flask run.
pytestmark = pytest.mark.slow

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

# Where the page's clock starts (see the page fixture).
PAGE_CLOCK_STARTS = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
# Nothing listens on port 9: every connection attempt is refused.
UNREACHABLE_DATABASE = "postgresql+psycopg://reader@127.0.0.1:9/articles"


# The page's code is the same bytes in every step (tests/test_layout.py), and
# what it reads from a step, /pool and the API, the contract tests check on
# every step and both databases. So a browser runs it on the steps whose
# pages differ in what it is given: the first, with SQLAlchemy's pool
# settings, and the first with two engines, with step 4's.
BROWSER_STEPS = ["step01_engine", "step06_multiple_databases"]


@pytest.fixture(params=BROWSER_STEPS)
def step(request):
    """Name each step whose page a browser tests."""
    return request.param


@pytest.fixture
def backend():
    """Test the page on SQLite: what it shows comes from /pool on either database."""
    return "sqlite"


@pytest.fixture(scope="module")
def browser():
    """Start a headless Chromium for the module's tests."""
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail(HOW_TO_GET_CHROMIUM)
        pytest.skip(HOW_TO_GET_CHROMIUM)
    with playwright.sync_playwright() as driver:
        browser = launch(driver, chromium)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """Open a new browser page, on a clock of its own that stands still.

    The panel asks for /pool once a second. Rather than wait for the wall
    clock, a test moves the page's clock on (page.clock.run_for): the
    page's timers fire at once, and its requests to the server are real.
    """
    context = browser.new_context()
    page = context.new_page()
    page.clock.install(time=PAGE_CLOCK_STARTS)
    # Installed, the clock still runs with the wall clock; paused, a busy
    # machine cannot slip the page an extra tick.
    page.clock.pause_at(PAGE_CLOCK_STARTS + datetime.timedelta(minutes=1))
    yield page
    context.close()


def take_samples(page, seconds):
    """Move the page's clock on by whole seconds, and wait for the samples
    of /pool the panel asks for meanwhile, one a second."""
    wait_for_samples(page, 1)
    before = int(page.get_attribute("#pool-chart", "data-samples"))
    page.clock.run_for(seconds * 1000)
    wait_for_samples(page, before + seconds)


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
    expect(page.locator('[data-pool="connects"]')).to_have_text("1")
    page.clock.run_for(2500)
    wait_for_samples(page, 3)

    status = server.get("/pool").json()
    for key in ("pool_class", "size", "pid", "url"):
        expect(page.locator(f'[data-pool="{key}"]')).to_have_text(str(status[key]))
    # One request on load, then one a second: two in 2.5 seconds.
    assert len(pool_requests) == 3


def test_the_chart_accumulates_a_sample_a_second(step, serve, page):
    server = serve(step)
    page.goto(server.url + "/")

    # From the first sample on, each series shows its latest value as a dot.
    wait_for_samples(page, 1)
    for series in ("checked_out", "overflow", "connects"):
        expect(page.locator(f'#pool-chart [data-latest="{series}"]')).to_have_count(1)
    take_samples(page, 3)

    for series in ("checked_out", "overflow", "connects"):
        points = page.get_attribute(f'[data-series="{series}"]', "points").split()
        assert len(points) >= 4


# Each step's own settings, and an override of step 4's.
SETTINGS_RUNS = [
    *(pytest.param(step, {}, id=f"{step}-defaults") for step in BROWSER_STEPS),
    pytest.param(
        "step06_multiple_databases",
        {"pool_pre_ping": True, "pool_size": 3, "pool_recycle": 60},
        id="step06_multiple_databases-override",
    ),
]


@pytest.mark.parametrize(("step", "engine_options"), SETTINGS_RUNS)
def test_the_panel_shows_the_settings_in_force(step, serve, page, engine_options):
    server = serve(step, FLASK_ENGINE_OPTIONS=json.dumps(engine_options))
    options = server.get("/pool").json()["options"]
    assert engine_options.items() <= options.items()

    page.goto(server.url + "/")
    wait_for_samples(page, 1)

    shown = {
        key: json.loads(page.text_content(f'[data-option="{key}"]'))
        for key in options
        if key != "pool_class"
    }
    assert shown == {key: options[key] for key in shown}


def test_step_2_answers_a_burst_with_503s_and_keeps_connections_checked_out(
    serve, page
):
    server = serve(
        "step02_session", FLASK_ENGINE_OPTIONS=json.dumps(SMALL_POOL_FAILING_FAST)
    )

    burst_and_wait(page, server, let_pass=page.clock.run_for)

    result = page.locator("#burst-result")
    assert int(result.get_attribute("data-unavailable")) > 0
    assert int(result.get_attribute("data-ok")) < 20
    expect(result).to_contain_text("× 503")
    # The burst is over and connections are still checked out: flagged.
    expect(page.locator("#held-warning")).to_be_visible()
    expect(page.locator('[data-pool="checked_out"]')).to_have_class("held")


# Step 3's teardown; step 9's, after GET /messages, the burst's target, an
# async view.
@pytest.mark.parametrize("step", ["step03_teardown", "step09_app_context"])
def test_from_step_3_on_the_same_burst_succeeds_async_view_included(step, serve, page):
    server = serve(step, FLASK_ENGINE_OPTIONS=json.dumps(SMALL_POOL_FAILING_FAST))

    burst_and_wait(page, server, let_pass=page.clock.run_for)

    expect(page.locator('#burst select[name="path"]')).to_have_value("/messages")
    result = page.locator("#burst-result")
    assert result.get_attribute("data-ok") == "20"
    assert result.get_attribute("data-unavailable") == "0"
    expect(page.locator("#held-warning")).to_be_hidden()
    expect(page.locator('[data-pool="checked_out"]')).to_have_text("0")


def test_a_burst_from_the_page_holds_at_most_six_connections_at_once(page, tmp_path):
    # Step 1's app in this process, to watch its pool: how many connections
    # are checked out at once, at most.
    create_app = importlib.import_module("step01_engine").create_app
    databases = {"DATABASE_URL": f"sqlite:///{tmp_path / 'messages.sqlite'}"}
    initialize_databases(create_app, databases)
    app = create_app(databases)
    lock = threading.Lock()
    checked_out = {"now": 0, "most": 0}

    def on_checkout(*args):
        with lock:
            checked_out["now"] += 1
            checked_out["most"] = max(checked_out["most"], checked_out["now"])
        # Each request holds its connection a while, so that the requests
        # the browser sends at once are all running together.
        time.sleep(0.2)

    def on_checkin(*args):
        with lock:
            checked_out["now"] -= 1

    event.listen(app.extensions["engine"], "checkout", on_checkout)
    event.listen(app.extensions["engine"], "checkin", on_checkin)
    # A thread per request, as flask run serves.
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        burst_and_wait(
            page, types.SimpleNamespace(url=url), let_pass=page.clock.run_for
        )
    finally:
        server.shutdown()
        serving.join()
        server.server_close()
        close_app(app)

    assert page.locator("#burst-result").get_attribute("data-ok") == "20"
    # Chromium sends six requests at once to one server, and no more: a
    # pool of five takes one overflow connection at most.
    assert checked_out["most"] == 6


def test_when_the_database_fails_the_page_keeps_its_live_panel(step, serve, page):
    server = serve(step, init_db=False, DATABASE_URL=UNREACHABLE_DATABASE)

    response = page.goto(server.url + "/")

    assert response.status == 503
    expect(page.locator("#database-error")).to_contain_text("database unavailable")
    take_samples(page, 1)
    expect(page.locator('[data-pool="connects"]')).to_have_text("0")


def test_when_step_2s_pool_runs_dry_the_page_shows_it_in_its_panel(serve, page):
    server = serve(
        "step02_session", FLASK_ENGINE_OPTIONS=json.dumps(SMALL_POOL_FAILING_FAST)
    )

    for _ in range(10):
        response = page.goto(server.url + "/")
        if response.status == 503:
            break

    assert response.status == 503
    expect(page.locator("#database-error")).to_contain_text("QueuePool limit")
    take_samples(page, 1)
    expect(page.locator("#held-warning")).to_be_visible()


def test_the_page_requests_nothing_from_another_origin(step, serve, page):
    server = serve(step)
    requested = []
    page.on("request", lambda request: requested.append(request.url))

    # A small burst: step 2 keeps every connection it touches.
    burst_and_wait(page, server, count=3, let_pass=page.clock.run_for)
    page.fill('input[name="text"]', "from the browser")
    page.click("#new-message button")
    expect(page.locator("#messages li")).to_have_text(["from the browser"])

    assert requested
    assert [url for url in requested if not url.startswith(server.url + "/")] == []


def test_the_form_adds_a_message_and_shows_errors(step, serve, page):
    server = serve(step)
    page.goto(server.url + "/")
    expect(page.locator("#no-messages")).to_be_visible()

    page.fill('input[name="text"]', "typed in a browser")
    page.click("#new-message button")

    expect(page.locator("#messages li")).to_have_text(["typed in a browser"])
    assert server.get("/messages").json()[0]["text"] == "typed in a browser"

    # A NUL character passes the browser's checks; the server refuses it.
    page.fill('input[name="text"]', "a\x00b")
    page.click("#new-message button")
    expect(page.locator("#form-error")).to_contain_text("NUL")
    assert len(server.get("/messages").json()) == 1


def test_make_screenshots_takes_the_readmes_screenshots(browser, tmp_path):
    paths = take_screenshots(tmp_path, browser)

    assert [path.name for path in paths] == list(SCREENSHOTS.values())
    # Step 2's README shows them, beside step 3's answer to the same burst.
    readme = (ROOT / "step02_session" / "README.md").read_text()
    for path in paths:
        assert path.read_bytes().startswith(b"\x89PNG\r\n")
        assert f"../docs/screenshots/{path.name}" in readme
        assert (ROOT / "docs" / "screenshots" / path.name).is_file()


def test_step_6s_page_shows_the_audit_pool_as_pool_reports_it(serve, page):
    server = serve("step06_multiple_databases")

    page.goto(server.url + "/")
    page.fill('#new-message input[name="text"]', "audited")
    page.click("#new-message button")
    expect(page.locator("#messages")).to_contain_text("audited")
    take_samples(page, 1)

    audit = server.get("/pool").json()["audit"]
    assert audit["connects"] == 1
    for key in ("checked_out", "checked_in", "connects", "url"):
        expect(page.locator(f'#audit-pool [data-engine-pool="{key}"]')).to_have_text(
            str(audit[key])
        )
    assert [entry["text"] for entry in server.get("/audit").json()] == ["audited"]
