"""Step 3: ``Session.remove()`` on teardown_appcontext, and every cost of step 2 gone.

SQLAlchemy's documentation, "Using Thread-Local Scope with Web Applications":
the Session is removed when the request ends, so that the next request on the
thread begins with a new one. Each test here would fail on step 2.
"""

import gc
import json

import pytest
from flask.globals import app_ctx
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

from testbed.load import requests_from_threads
from testbed.threads import run_in_new_thread

from .faults import lose_connection_at_next_rollback
from .faults import lose_connection_before
from .stale_reads import read_again_after_a_change_elsewhere
from .steps import SMALL_POOL
from .steps import STEPS_WITH_THREAD_SCOPE
from .steps import keeps_a_session
from .steps import message_class
from .steps import pool_status
from .steps import served
from .steps import steps_from

STEPS_WITH_TEARDOWN = steps_from("step03_teardown")
# Steps 3 to 8: the Session of the thread, removed on teardown.
STEPS_WITH_THREAD_SCOPE_AND_TEARDOWN = [
    step for step in STEPS_WITH_THREAD_SCOPE if step in STEPS_WITH_TEARDOWN
]


@pytest.fixture(params=STEPS_WITH_TEARDOWN)
def step(request):
    """Name each step that removes the Session on teardown."""
    return request.param


# One of each kind of request: the page, reads, writes, a 404 and a 400.
EVERY_KIND_OF_REQUEST = [
    ("get", "/", None),
    ("get", "/messages", None),
    ("get", "/messages/1", None),
    ("post", "/messages", {"text": "new"}),
    ("patch", "/messages/1", {"text": "changed"}),
    ("delete", "/messages/1", None),
    ("get", "/messages/404", None),
    ("post", "/messages", {"text": ""}),
]


def test_every_request_returns_its_connection_to_the_pool(client):
    client.post("/messages", json={"text": "first"})

    for method, path, body in EVERY_KIND_OF_REQUEST:
        getattr(client, method)(path, json=body)

        status = pool_status(client)
        assert status["checked_out"] == 0, (method, path)
        assert status["checked_in"] == 1, (method, path)


def test_a_connection_lost_before_teardown_keeps_the_answer(client):
    assert client.get("/messages").status_code == 200
    connects = pool_status(client)["connects"]
    lose_connection_at_next_rollback(client.application.extensions["engine"])

    # The rollback in teardown fails, after the answer was ready: the answer
    # stands, where letting the error out would have made it a 500.
    assert client.get("/messages").status_code == 200

    # The thread's next request has a new Session, on a new connection.
    assert client.get("/messages").status_code == 200
    status = pool_status(client)
    assert status["checked_out"] == 0
    assert status["connects"] == connects + 1


def test_a_teardown_that_fails_in_any_way_keeps_the_answer(client):
    assert client.get("/messages").status_code == 200
    sessions = client.application.extensions["session"]

    def out_of_step(connection):
        # What a connection that another process shares may raise: not a
        # DBAPIError, since the driver saw nothing wrong.
        raise IndexError("tuple index out of range")

    event.listen(
        client.application.extensions["engine"], "rollback", out_of_step, once=True
    )

    assert client.get("/messages").status_code == 200
    # The Session whose rollback failed is forgotten: the next request
    # starts afresh.
    assert not keeps_a_session(sessions)
    assert client.get("/messages").status_code == 200


def test_a_reused_thread_reads_fresh_rows(client):
    # The last request's transaction ended with its Session.
    assert read_again_after_a_change_elsewhere(client) == "changed"


def test_a_finished_thread_leaves_nothing_for_the_garbage_collector(client):
    gc.disable()
    try:
        assert run_in_new_thread(lambda: client.get("/messages").status_code) == 200

        assert pool_status(client)["checked_out"] == 0
    finally:
        gc.enable()


def test_a_failed_transaction_leaves_nothing_for_the_threads_next_request(client):
    message = client.post("/messages", json={"text": "original"}).get_json()
    lose_connection_before(client.application.extensions["engine"], "UPDATE")

    lost = client.patch(f"/messages/{message['id']}", json={"text": "lost"})
    assert lost.status_code == 503
    assert lost.get_json()["error"].startswith("database unavailable")

    # Teardown rolled the failed transaction back with the Session.
    after = client.get("/messages")
    assert after.status_code == 200
    assert after.get_json() == [message]


@pytest.mark.slow
@pytest.mark.parametrize("step", served(STEPS_WITH_TEARDOWN))
def test_reused_threads_share_a_small_pool_without_a_failure(step, make_app):
    app = make_app(step, engine_options=SMALL_POOL)

    outcomes = requests_from_threads(app, threads=8, requests_each=100)

    assert [len(outcome) for outcome in outcomes] == [100] * 8
    assert {answer.status for outcome in outcomes for answer in outcome} == {200}
    status = pool_status(app.test_client())
    assert status["checked_out"] == 0
    assert status["connects"] <= 2


@pytest.mark.parametrize("step", served(STEPS_WITH_TEARDOWN))
def test_flask_run_serves_every_request_from_a_small_pool(step, serve):
    server = serve(step, FLASK_ENGINE_OPTIONS=json.dumps(SMALL_POOL))

    statuses = [server.get("/messages").status_code for _ in range(40)]

    assert statuses == [200] * 40
    assert server.get("/pool").json()["checked_out"] == 0


@pytest.mark.parametrize("step", STEPS_WITH_THREAD_SCOPE_AND_TEARDOWN)
def test_thread_scope_shares_one_session_between_nested_app_contexts(step, app):
    registry = app.extensions["session"]

    with app.app_context():
        outer = registry()
        with app.app_context():
            inner = registry()
        # The inner context's teardown removed the Session the outer one uses.
        after_inner = registry()

    assert inner is outer
    assert after_inner is not outer


@pytest.mark.parametrize("step", STEPS_WITH_THREAD_SCOPE_AND_TEARDOWN)
def test_app_context_scope_gives_each_app_context_its_own_session(step, app):
    # Flask-SQLAlchemy 3 scopes its Session to the app context, not the thread
    # (flask_sqlalchemy.session._app_ctx_id). The same teardown then removes
    # only the Session of the context that ends.
    engine = app.extensions["engine"]
    app.extensions["session"].remove()
    registry = scoped_session(
        sessionmaker(bind=engine), scopefunc=lambda: id(app_ctx._get_current_object())
    )
    app.extensions["session"] = registry

    with app.app_context():
        outer = registry()
        with app.app_context():
            inner = registry()
        after_inner = registry()

    assert inner is not outer
    assert after_inner is outer


def test_teardown_appcontext_also_cleans_up_after_app_contexts_without_a_request(
    app,
):
    # As in a CLI command, a script or a background job.
    with app.app_context():
        app.extensions["session"].execute(text("SELECT 1"))

    assert pool_status(app.test_client())["checked_out"] == 0


def test_teardown_request_would_miss_app_contexts_without_a_request(make_app):
    app = make_app("step02_session")
    registry = app.extensions["session"]
    app.teardown_request(lambda exception: registry.remove())
    client = app.test_client()

    client.get("/messages")
    assert pool_status(client)["checked_out"] == 0

    with app.app_context():
        registry.execute(text("SELECT 1"))
    assert pool_status(client)["checked_out"] == 1


def test_close_returns_the_connection_and_keeps_the_session_remove_replaces_it(
    step, app
):
    registry = app.extensions["session"]
    engine = app.extensions["engine"]
    app.test_client().post("/messages", json={"text": "held"})

    with app.app_context():
        session = registry()
        held = session.get(message_class(app), 1)
        session.close()
        assert engine.pool.checkedout() == 0
        assert held not in session
        assert len(session.identity_map) == 0
        assert registry() is session

        registry().execute(text("SELECT 1"))
        registry.remove()
        assert engine.pool.checkedout() == 0
        assert registry() is not session
