"""The contract every step keeps: the JSON API, its errors, /pool and the page."""

import importlib
import logging
import os
import re
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import inspect
from sqlalchemy import text
from sqlalchemy.engine import make_url

from testbed import ROOT
from testbed.threads import run_in_new_thread

from .conftest import CONTRACT_BACKENDS
from .faults import delete_elsewhere_before
from .faults import lose_connection_before
from .instance_folder import keep_out_of_the_instance_folder
from .steps import STEPS
from .steps import STEPS_WITH_TWO_DATABASES
from .steps import connections_opened_at_startup
from .steps import import_step
from .steps import pool_status


@pytest.fixture(params=CONTRACT_BACKENDS)
def backend(request):
    """Name each database the contract runs on: MariaDB's too, named both ways."""
    return request.param


# What the pool panel and the page's frame show is SQLAlchemy's pool and the
# app's settings, the same code whatever the database: those tests run on
# SQLite. The page's messages and /pool's database URL run on all three.
ON_SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


def create(client, text="hello"):
    response = client.post("/messages", json={"text": text})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_a_message_has_an_id_its_text_and_an_iso_8601_creation_time(client):
    before = datetime.now(UTC)
    message = create(client, "hello")

    assert set(message) == {"id", "text", "created_at"}
    assert isinstance(message["id"], int)
    assert message["text"] == "hello"
    created_at = datetime.fromisoformat(message["created_at"])
    assert created_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= created_at <= datetime.now(UTC)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_creation_times_are_utc_whatever_the_servers_time_zone(step, make_app):
    options = {"connect_args": {"options": "-c timezone=Asia/Kolkata"}}
    client = make_app(step, engine_options=options).test_client()

    message = create(client)

    assert message["created_at"].endswith("+00:00")
    assert client.get("/messages").get_json() == [message]


def test_create_answers_201_with_the_location_of_the_new_message(client):
    response = client.post("/messages", json={"text": "hello"})

    assert response.status_code == 201
    assert response.headers["Location"] == f"/messages/{response.get_json()['id']}"
    assert client.get(response.headers["Location"]).get_json() == response.get_json()


def test_messages_are_listed_by_id(client):
    created = [create(client, text) for text in ("c", "a", "b")]

    response = client.get("/messages")

    assert response.status_code == 200
    assert response.get_json() == sorted(created, key=lambda message: message["id"])


def test_patch_replaces_the_text_and_keeps_the_rest(client):
    message = create(client, "before")

    response = client.patch(f"/messages/{message['id']}", json={"text": "after"})

    assert response.status_code == 200
    assert response.get_json() == {**message, "text": "after"}
    assert client.get(f"/messages/{message['id']}").get_json()["text"] == "after"


def test_delete_answers_204_and_the_message_is_gone(client):
    message = create(client)

    response = client.delete(f"/messages/{message['id']}")

    assert response.status_code == 204
    assert response.data == b""
    assert client.get(f"/messages/{message['id']}").status_code == 404
    assert client.get("/messages").get_json() == []


@pytest.mark.parametrize(
    ("method", "body"),
    [("get", None), ("patch", {"text": "x"}), ("delete", None)],
)
@pytest.mark.parametrize("message_id", ["deleted", 2147483647, 2147483648, 10**30])
def test_an_absent_message_is_a_json_404(shared_client, method, body, message_id):
    client = shared_client
    if message_id == "deleted":
        message_id = create(client)["id"]
        client.delete(f"/messages/{message_id}")
    before = client.get("/messages").get_json()

    response = getattr(client, method)(f"/messages/{message_id}", json=body)

    assert response.status_code == 404
    assert "error" in response.get_json()
    assert client.get("/messages").get_json() == before


@pytest.mark.parametrize(
    ("method", "statement", "body"),
    [("patch", "UPDATE", {"text": "too late"}), ("delete", "DELETE", None)],
)
def test_a_message_deleted_by_another_request_meanwhile_is_a_404(
    client, method, statement, body
):
    message = create(client)
    engine = client.application.extensions["engine"]
    delete_elsewhere_before(engine, statement, message["id"])

    response = getattr(client, method)(f"/messages/{message['id']}", json=body)

    assert response.status_code == 404
    assert response.get_json()["error"]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM messages")).scalar() == 0


def test_text_of_1_and_of_500_characters_is_accepted(client):
    assert create(client, "x")["text"] == "x"
    assert create(client, "é" * 500)["text"] == "é" * 500


def test_a_message_of_emoji_round_trips_whole(client):
    # Four bytes each in UTF-8: MariaDB keeps them in utf8mb4 only, as the
    # schema and the URL ask for (its "utf8" holds three bytes at most).
    text = "😀" * 500
    created = create(client, text)
    assert created["text"] == text
    assert client.get(f"/messages/{created['id']}").get_json()["text"] == text


# Bad input, each with the status and the error it must get.
BAD_BODIES = [
    pytest.param(
        {"data": "text=hi", "content_type": "application/x-www-form-urlencoded"},
        415,
        "Content-Type: application/json",
        id="form-encoded",
    ),
    pytest.param({"data": b"", "content_type": None}, 415, "JSON", id="no-body"),
    pytest.param(
        {"data": "{not json", "content_type": "application/json"},
        400,
        "JSON object",
        id="malformed-json",
    ),
    pytest.param(
        {"data": "[" * 50_000, "content_type": "application/json"},
        400,
        "JSON object",
        id="deeply-nested-json",
    ),
    pytest.param(
        {"data": "null", "content_type": "application/json"},
        400,
        "JSON object",
        id="null",
    ),
    pytest.param({"json": ["hi"]}, 400, "JSON object", id="array"),
    pytest.param({"json": {}}, 400, '"text"', id="no-text"),
    pytest.param({"json": {"txt": "hi"}}, 400, '"text"', id="misspelt-key"),
    pytest.param({"json": {"text": "hi", "id": 7}}, 400, '"text"', id="unexpected-key"),
    pytest.param({"json": {"text": ""}}, 400, "1 to 500", id="empty"),
    pytest.param({"json": {"text": "x" * 501}}, 400, "1 to 500", id="too-long"),
    pytest.param({"json": {"text": None}}, 400, "string", id="null-text"),
    pytest.param({"json": {"text": 42}}, 400, "string", id="number"),
    pytest.param({"json": {"text": ["hi"]}}, 400, "string", id="list"),
    pytest.param({"json": {"text": "a\x00b"}}, 400, "NUL", id="nul-character"),
    pytest.param(
        {"data": '{"text": "\\ud800"}', "content_type": "application/json"},
        400,
        "surrogate",
        id="lone-surrogate",
    ),
    pytest.param(
        {"data": b'{"text": "\xff"}', "content_type": "application/json"},
        400,
        "JSON object",
        id="invalid-utf8",
    ),
    pytest.param(
        {"json": {"text": "x" * 70_000}}, 413, "capacity limit", id="body-over-64-kib"
    ),
]


@pytest.mark.parametrize(("request_args", "status", "error"), BAD_BODIES)
@pytest.mark.parametrize("method", ["post", "patch"])
def test_bad_input_gets_a_json_error_and_changes_nothing(
    shared_client, method, request_args, status, error
):
    client = shared_client
    message = create(client, "unchanged")
    path = "/messages" if method == "post" else f"/messages/{message['id']}"
    before = client.get("/messages").get_json()

    response = getattr(client, method)(path, **request_args)

    assert response.status_code == status
    assert error in response.get_json()["error"]
    assert message in before
    assert client.get("/messages").get_json() == before


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/nowhere", 404),
        ("get", "/messages/abc", 404),
        ("get", "/messages/-1", 404),
        ("put", "/messages/1", 405),
        ("delete", "/messages", 405),
        ("post", "/pool", 405),
    ],
)
def test_routing_errors_are_json_too(shared_client, method, path, status):
    before = shared_client.get("/messages").get_json()

    response = getattr(shared_client, method)(path)

    assert response.status_code == status
    assert response.is_json
    assert response.get_json()["error"]
    assert shared_client.get("/messages").get_json() == before


# Each statement the API runs, and a request that runs it.
REQUESTS_BY_STATEMENT = [
    ("get", "/messages", None, "SELECT"),
    ("get", "/messages/1", None, "SELECT"),
    ("post", "/messages", {"text": "lost"}, "INSERT"),
    ("patch", "/messages/1", {"text": "lost"}, "UPDATE"),
    ("delete", "/messages/1", None, "DELETE"),
]


def test_a_connection_lost_mid_request_is_a_json_503_with_its_traceback_logged(
    client, caplog
):
    create(client, "first")

    for method, path, body, statement in REQUESTS_BY_STATEMENT:
        closed = lose_connection_before(
            client.application.extensions["engine"], statement
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=client.application.name):
            # Each from a thread of its own: step 2, without teardown, would
            # answer a thread's next request with the failed Session.
            response = run_in_new_thread(
                lambda: getattr(client, method)(path, json=body)  # noqa: B023
            )

        assert closed, (method, path)
        assert response.status_code == 503, (method, path)
        assert response.get_json()["error"].startswith("database unavailable (")
        [record] = [r for r in caplog.records if r.name == client.application.name]
        assert record.getMessage() == "database unavailable"
        # The traceback goes to the log, not to the client.
        assert record.exc_info is not None
        assert "Traceback" not in response.get_data(as_text=True)


def test_pool_shows_the_pool_the_process_and_the_database(client, database_url):
    status = pool_status(client)

    assert status["pool_class"] == "QueuePool"
    assert status["size"] == 5
    assert status["pid"] == os.getpid()
    assert status["url"] == make_url(database_url).render_as_string()
    for count in ("checked_in", "checked_out", "overflow", "connects"):
        assert isinstance(status[count], int)


@ON_SQLITE_ONLY
def test_pool_opens_no_connection_before_the_first_query_but_startups_own(step, client):
    # From step 5 on, the app maps its models as it is created: a query.
    opened_at_startup = connections_opened_at_startup(step)
    assert pool_status(client)["connects"] == opened_at_startup
    assert pool_status(client)["checked_in"] == opened_at_startup

    client.get("/messages")

    status = pool_status(client)
    assert status["connects"] == 1
    assert status["checked_in"] + status["checked_out"] == 1


# SQLAlchemy's own QueuePool defaults, in force until step 4 sets its own.
SQLALCHEMY_POOL_DEFAULTS = {
    "pool_class": "QueuePool",
    "pool_pre_ping": False,
    "pool_recycle": -1,
    "pool_size": 5,
    "max_overflow": 10,
    "pool_timeout": 30,
}


# Step 4's own, in force from step 4 on: pre-ping, recycling at 30 minutes,
# and a 10-second wait for a free connection. Written out, not read from
# POOL_DEFAULTS, so that a changed default fails here.
STEP_4_POOL_DEFAULTS = {
    **SQLALCHEMY_POOL_DEFAULTS,
    "pool_pre_ping": True,
    "pool_recycle": 1800,
    "pool_timeout": 10,
}


@ON_SQLITE_ONLY
def test_pool_shows_the_settings_in_force(step, client):
    options = pool_status(client)["options"]

    if step < "step04_pooling":
        assert options == SQLALCHEMY_POOL_DEFAULTS
    else:
        assert options == STEP_4_POOL_DEFAULTS


@ON_SQLITE_ONLY
def test_pool_shows_an_overridden_setting(step, make_app):
    override = {"pool_pre_ping": True, "pool_recycle": 60, "max_overflow": 0}
    client = make_app(step, engine_options=override).test_client()

    options = pool_status(client)["options"]

    assert {key: options[key] for key in override} == override


@ON_SQLITE_ONLY
def test_pool_counts_the_requests_running_but_not_its_own(step, app):
    monitor = importlib.import_module(f"{step}.monitor")

    @app.get("/requests-running")
    def requests_running():
        return {"seen from inside": monitor.pool_status()["requests_running"]}

    client = app.test_client()
    assert client.get("/requests-running").get_json() == {"seen from inside": 1}
    assert pool_status(client)["requests_running"] == 0


@ON_SQLITE_ONLY
def test_pool_counts_the_connections_this_process_opened(step, client):
    opened_at_startup = connections_opened_at_startup(step)
    assert pool_status(client)["connects_in_this_process"] == opened_at_startup

    client.get("/messages")

    status = pool_status(client)
    assert status["connects_in_this_process"] == status["connects"] == 1


def test_pool_masks_the_database_password(step):
    # Nothing listens there, and nothing needs to: /pool runs no query.
    url = "postgresql+psycopg://reader:s3cret@127.0.0.1:9/articles"
    app = import_step(step).create_app({"DATABASE_URL": url})

    status = pool_status(app.test_client())

    assert status["url"] == "postgresql+psycopg://reader:***@127.0.0.1:9/articles"
    assert status["connects"] == 0


def test_init_db_creates_the_table_and_can_run_twice(step, database_url):
    app = import_step(step).create_app({"DATABASE_URL": database_url})
    runner = app.test_cli_runner()

    for _ in range(2):
        result = runner.invoke(args=["init-db"])
        assert result.exit_code == 0
        assert result.output == "Initialized the database.\n"

    engine = app.extensions["engine"]
    assert [c["name"] for c in inspect(engine).get_columns("messages")] == [
        "id",
        "text",
        "created_at",
    ]
    engine.dispose()


def test_the_default_database_is_a_sqlite_file_in_the_instance_folder(
    step, monkeypatch, tmp_path
):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("FLASK_DATABASE_URL", raising=False)
    # Flask's instance folder for a step is the repository's instance/.
    assert Flask(step).instance_path == str(ROOT / "instance")
    keep_out_of_the_instance_folder(monkeypatch, tmp_path)

    app = import_step(step).create_app()

    expected = os.path.join(app.instance_path, f"{step}.sqlite")
    assert app.config["DATABASE_URL"] == f"sqlite:///{expected}"
    assert os.path.isdir(app.instance_path)


def test_the_database_url_variable_replaces_the_default(step, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'env.sqlite'}")

    app = import_step(step).create_app()

    assert app.extensions["engine"].url.database == str(tmp_path / "env.sqlite")


def test_flask_prefixed_variables_set_engine_options(step, monkeypatch, tmp_path):
    monkeypatch.setenv("FLASK_DATABASE_URL", f"sqlite:///{tmp_path / 'flask.sqlite'}")
    monkeypatch.setenv("FLASK_ENGINE_OPTIONS", '{"pool_size": 2, "max_overflow": 0}')

    app = import_step(step).create_app()

    status = pool_status(app.test_client())
    assert status["size"] == 2
    assert status["options"]["max_overflow"] == 0
    assert status["url"].endswith("flask.sqlite")


def test_test_config_wins_over_the_environment(step, monkeypatch, tmp_path):
    monkeypatch.setenv("FLASK_ENGINE_OPTIONS", '{"pool_size": 2}')

    app = import_step(step).create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'test.sqlite'}",
            "ENGINE_OPTIONS": {"pool_size": 3},
        }
    )

    assert pool_status(app.test_client())["size"] == 3


def test_the_page_shows_the_step_its_messages_a_form_and_the_pool_panel(step, client):
    create(client, "first message")
    create(client, "<script>alert(1)</script>")

    response = client.get("/")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    number = int(step[4:6])
    assert f"<h1>Step {number}:" in page
    assert '<p id="concept">' in page
    assert "first message" in page
    # Text is escaped, never run.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert '<form id="new-message">' in page
    for label, key in [
        ("checked out", "checked_out"),
        ("checked in", "checked_in"),
        ("overflow", "overflow"),
        ("connects", "connects"),
    ]:
        assert f'<dt>{label}</dt><dd data-pool="{key}">' in page
    # The panel's script, served by the app itself, polls /pool.
    assert 'src="/static/panel.js"' in page
    assert 'data-pool-url="/pool"' in page
    with client.get("/static/panel.js") as script:
        assert "fetch(poolUrl" in script.get_data(as_text=True)


@ON_SQLITE_ONLY
def test_the_panel_shows_every_engine_after_the_first_under_its_name(
    step, backend, client
):
    page = client.get("/").get_data(as_text=True)
    status = pool_status(client)

    # One engine until step 6, then the audit database's too: the same page
    # shows as many as the step has, each under its key in /pool.
    others = list(client.application.extensions["engines"])[1:]
    assert re.findall(r'<dl id="(\w+)-pool" data-engine="\1">', page) == others
    assert others == (["audit"] if step in STEPS_WITH_TWO_DATABASES else [])
    for name in others:
        assert make_url(status[name]["url"]).get_backend_name() == backend


@ON_SQLITE_ONLY
def test_each_number_on_the_panel_says_what_it_means(client):
    page = client.get("/").get_data(as_text=True)

    for key in re.findall(r'data-(?:pool|option|engine-pool)="(\w+)"', page):
        # Each value is followed by its one-line legend.
        assert re.search(
            rf'data-(?:pool|option|engine-pool)="{key}">…</dd>\s*<dd class="legend">\w',
            page,
        ), key
    # True of any pool: no legend names a size, and connects says why it
    # grows past the pool's size, as overflow connections come and go.
    assert "with size 5" not in page
    assert "negative while fewer than size are open" in page
    assert "overflow connections, which close when returned" in page


@ON_SQLITE_ONLY
def test_the_page_names_every_step_and_how_to_run_it(step, client):
    page = client.get("/").get_data(as_text=True)

    assert f"Step {STEPS.index(step) + 1} of {len(STEPS)}" in page
    for other in STEPS:
        assert f"<code>make run STEP={other}</code>" in page
    assert f'<li aria-current="step"><code>make run STEP={step}</code>' in page
    assert '<p id="next-step">' in page


def test_when_the_database_fails_the_page_still_answers_with_its_panel(step):
    # Nothing listens on port 9: every connection attempt is refused.
    app = import_step(step).create_app(
        {"DATABASE_URL": "postgresql+psycopg://reader@127.0.0.1:9/articles"}
    )
    client = app.test_client()

    page = client.get("/")
    api = client.get("/messages")

    assert page.status_code == 503
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert '<p id="database-error" role="alert">' in html
    assert "database unavailable (OperationalError)" in html
    assert "The messages could not be read." in html
    assert '<section id="pool">' in html
    # The JSON API keeps its JSON errors.
    assert api.status_code == 503
    assert api.get_json()["error"].startswith("database unavailable")


@ON_SQLITE_ONLY
def test_the_page_says_when_there_are_no_messages(client):
    assert "No messages yet." in client.get("/").get_data(as_text=True)
