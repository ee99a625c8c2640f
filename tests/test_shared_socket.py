"""Two processes on one connection's socket: JSON 503s, never a 500, then recovery.

What a forking server does to a pool it did not replace (step 3 under
uWSGI or ``gunicorn --preload``), done here on purpose to every step: a
forked child goes on using the app's pooled connection, straight through
the driver, while the app serves requests on it. Their messages
interleave on the wire, and each side reads the other's answers: psycopg
raises errors of every kind ("lost synchronization with server", "unexpected
result", "can't change autocommit now"), and SQLAlchemy some of its own
("This result object does not return rows"). The app must answer each
such request with a JSON 503, and serve again once the child has gone.
"""

import os
import signal
import threading
import time

import psycopg
import pytest
from flask import got_request_exception
from sqlalchemy import text

from .steps import STEPS
from .steps import served

# How long the child talks on the shared socket.
SHARING_SECONDS = 1.5
# After the child has gone, the app must be serving again within this many
# requests: the lost connection costs one 503 at most per pooled connection.
REQUESTS_TO_RECOVER = 5


@pytest.fixture
def backend():
    """Share a PostgreSQL connection: SQLite has no socket to share."""
    return "postgresql"


def share_the_pooled_connection(engine):
    """Fork a child that runs queries on the connection the pool lends next.

    The child uses the DBAPI connection directly, as fast as it can, until
    it is stopped. Return its pid and the connection's server process.
    """
    pooled = engine.raw_connection()
    shared = pooled.dbapi_connection
    server_process = shared.info.backend_pid
    pooled.close()
    pid = os.fork()
    if pid == 0:
        # Stopped by the parent; this deadline only bounds a child whose
        # parent died first.
        deadline = time.monotonic() + 10 * SHARING_SECONDS
        while time.monotonic() < deadline:
            try:
                shared.execute("SELECT 1").fetchall()
                shared.rollback()
            except psycopg.Error:
                pass
        os._exit(0)
    return pid, server_process


def stop_sharing(child, server_process, server):
    """Kill the child, and end the shared server session, as its loss would.

    Either side may be waiting for an answer that the other has read: ending
    the session wakes the parent with a lost connection.
    """
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    with server.admin_engine().connect() as connection:
        connection.execute(
            text("SELECT pg_terminate_backend(:pid)"), {"pid": server_process}
        )


def answer_of(client, method, path, body=None):
    """Send one request; return its status and JSON error, or the exception
    that escaped the app (a real server answers that with a 500 too)."""
    try:
        response = getattr(client, method)(path, json=body)
    except Exception as error:  # noqa: BLE001 - what escapes is the finding
        return (500, f"escaped: {type(error).__name__}: {error}")
    body = response.get_json(silent=True) or {}
    return (response.status_code, body.get("error") if isinstance(body, dict) else None)


def requests_of_every_kind(client, message_id):
    """Yield the API's requests in turn: reads, a write, a change, the page."""
    while True:
        yield answer_of(client, "get", "/messages")
        yield answer_of(client, "get", f"/messages/{message_id}")
        yield answer_of(client, "post", "/messages", {"text": "shared"})
        yield answer_of(client, "patch", f"/messages/{message_id}", {"text": "again"})
        yield answer_of(client, "get", "/")


@pytest.mark.slow
@pytest.mark.parametrize("step", served(STEPS))
def test_two_processes_on_one_connections_socket_get_json_503s_never_a_500(
    step, make_app, postgres
):
    # Not TESTING: an error that escapes a view becomes Flask's 500, as
    # under a real server, instead of reaching the test.
    app = make_app(step, TESTING=False)
    escaped = []
    got_request_exception.connect(
        lambda sender, exception, **extra: escaped.append(
            "".join(__import__("traceback").format_exception(exception)[-6:])
        ),
        app,
        weak=False,
    )
    client = app.test_client()
    message_id = client.post("/messages", json={"text": "first"}).get_json()["id"]
    answers = requests_of_every_kind(client, message_id)

    child, server_process = share_the_pooled_connection(app.extensions["engine"])
    stopper = threading.Timer(
        SHARING_SECONDS, stop_sharing, (child, server_process, postgres)
    )
    stopper.start()
    while_shared = []
    while not stopper.finished.is_set():
        while_shared.append(next(answers))
    stopper.join()
    after = [next(answers) for _ in range(2 * REQUESTS_TO_RECOVER)]

    # 404: a read may get another query's rows, and find no message.
    assert {status for status, _ in while_shared + after} <= {200, 201, 404, 503}, (
        escaped,
        [answer for answer in while_shared + after if answer[0] == 500],
    )
    for status, error in while_shared + after:
        if status == 503 and error is not None:
            assert error.startswith(("database unavailable (", "request failed ("))
    if step == "step02_session":
        # Without teardown, the thread's Session keeps the failed
        # transaction, and every later request fails on it: step 2's lesson
        # (test_without_teardown_a_failed_transaction_breaks_the_threads_next_request).
        assert {status for status, _ in after} == {503}
    else:
        # Serving again by itself: the last requests all succeed.
        assert {status for status, _ in after[REQUESTS_TO_RECOVER:]} <= {200, 201}
