"""Step 2: the ORM and scoped_session, and what having no teardown costs.

SQLAlchemy's documentation, "Contextual/Thread-local Sessions": the
scoped_session registry keeps one Session per thread until something calls
``remove()``. Step 2 never does; the tests below assert what that costs, and
step 3's tests show each cost gone.
"""

import gc
import json

import pytest
from sqlalchemy.orm import DeclarativeBase

from testbed.load import requests_from_threads
from testbed.threads import run_in_new_thread

from .faults import lose_connection_before
from .stale_reads import change_text_elsewhere
from .stale_reads import read_again_after_a_change_elsewhere
from .steps import SMALL_POOL
from .steps import STEPS_WITH_THREAD_SCOPE
from .steps import message_class
from .steps import pool_status
from .steps import steps_from

QUEUEPOOL_LIMIT = "QueuePool limit of size 2 overflow 0 reached"
# Two connections and no overflow; a request that finds none free within a
# second gives up (the default, 30 seconds, would only make the tests wait).
SMALL_POOL_FAILING_FAST = {**SMALL_POOL, "pool_timeout": 1}


# From step 9 on, the app context has the Session (tests/test_step09_app_context.py).
@pytest.mark.parametrize("step", STEPS_WITH_THREAD_SCOPE)
def test_each_thread_gets_its_own_session_and_keeps_it(step, make_app):
    registry = make_app(step).extensions["session"]

    here = registry()
    there = run_in_new_thread(registry)

    assert registry() is here
    assert there is not here


@pytest.mark.parametrize("step", steps_from("step02_session"))
def test_messages_are_orm_objects_of_a_typed_mapping(step, make_app):
    app = make_app(step)
    message_type = message_class(app)
    app.test_client().post("/messages", json={"text": "mapped"})

    with app.app_context():
        message = app.extensions["session"].get(message_type, 1)

    assert isinstance(message, message_type)
    assert message.text == "mapped"
    assert message_type.__table__.name == "messages"
    assert issubclass(message_type, DeclarativeBase)


@pytest.fixture
def client(make_app):
    """Return a test client of step 2; it runs requests in this thread."""
    return make_app("step02_session").test_client()


def test_without_teardown_the_connection_stays_checked_out_after_a_request(client):
    client.get("/messages")

    status = pool_status(client)
    assert status["checked_out"] == 1
    # No request runs: the connection is held by the thread's Session alone.
    assert status["requests_running"] == 0


def test_without_teardown_a_reused_thread_reads_a_stale_row(client):
    # The thread's Session is still in the transaction its last request began,
    # and that transaction still reads the database as it was then.
    assert read_again_after_a_change_elsewhere(client) == "original"


def test_the_identity_map_keeps_no_object_past_the_request_that_used_it(client):
    # Without snapshot reads, step 2 reads fresh rows: the Session's identity
    # map holds objects weakly, and nothing holds them once a request ends.
    # The stale row above comes from the open transaction, not from it.
    engine = client.application.extensions["engine"]
    message = client.post("/messages", json={"text": "original"}).get_json()
    assert client.get(f"/messages/{message['id']}").get_json()["text"] == "original"
    assert len(client.application.extensions["session"]().identity_map) == 0

    change_text_elsewhere(engine, message["id"], "changed")

    assert client.get(f"/messages/{message['id']}").get_json()["text"] == "changed"


def test_without_teardown_a_finished_threads_session_waits_for_the_garbage_collector(
    client,
):
    gc.disable()
    try:
        assert run_in_new_thread(lambda: client.get("/messages").status_code) == 200
        # The thread is gone; its Session, in a reference cycle, is not.
        assert pool_status(client)["checked_out"] == 1

        gc.collect()

        assert pool_status(client)["checked_out"] == 0
    finally:
        gc.enable()


def test_without_teardown_a_failed_transaction_breaks_the_threads_next_request(
    client,
):
    message = client.post("/messages", json={"text": "original"}).get_json()
    lose_connection_before(client.application.extensions["engine"], "UPDATE")

    lost = client.patch(f"/messages/{message['id']}", json={"text": "lost"})
    assert lost.status_code == 503

    # Nothing rolled the thread's Session back: it refuses all further work.
    after = client.get("/messages")
    assert after.status_code == 503
    assert after.get_json()["error"].startswith(
        "database unavailable (PendingRollbackError): This Session's transaction"
        " has been rolled back due to a previous exception during flush."
    )


def test_without_teardown_reused_threads_exhaust_the_pool(make_app):
    app = make_app("step02_session", engine_options=SMALL_POOL_FAILING_FAST)

    # With the collector off, a finished thread's Session keeps its
    # connection too: the outcome does not depend on when it runs.
    gc.disable()
    try:
        outcomes = requests_from_threads(app, threads=8, requests_each=200)
    finally:
        gc.enable()

    # Two threads took the two connections and kept them; the other six
    # waited pool_timeout for a connection that never came back.
    completed = [outcome for outcome in outcomes if len(outcome) == 200]
    failed = [outcome[-1] for outcome in outcomes if outcome[-1].status != 200]
    assert len(completed) == 2
    assert len(failed) == 6
    for answer in failed:
        assert answer.status == 503
        assert QUEUEPOOL_LIMIT in answer.error


def test_without_teardown_flask_run_soon_times_out_on_the_pool(serve):
    server = serve(
        "step02_session", FLASK_ENGINE_OPTIONS=json.dumps(SMALL_POOL_FAILING_FAST)
    )

    # flask run handles each request on a new thread; a finished thread's
    # Session keeps its connection until the garbage collector frees it.
    statuses = []
    for _ in range(20):
        response = server.get("/messages")
        statuses.append(response.status_code)
        if response.status_code != 200:
            break

    assert statuses[:2] == [200, 200]
    assert statuses[-1] == 503
    assert QUEUEPOOL_LIMIT in response.json()["error"]
