"""Flask-SQLAlchemy-Lite's async session through the same drills.

Lite makes an AsyncEngine per app from SQLALCHEMY_ASYNC_ENGINES, with
SQLAlchemy's default pool, hands a view ``db.async_session`` (one
AsyncSession per app context, kept in ``g``), and closes it at teardown
in ``_close_async_sessions``, an ``async def`` that Flask, like an async
view, runs through asgiref's ``async_to_sync``: on an event loop of its own,
in a thread of its own, not the view's. Whatever the teardown does with the
connection, it does on another loop than the one the view used it on.

Its issue #25 ("Library seems incompatible with asyncpg") reports a query
through ``db.async_session`` on asyncpg failing in the teardown; reproduced
here, on the first request, and on aiomysql too, with NullPool as well.

tests/async_apps.py's ``lite_app`` is the app.
"""

import asyncio
import re
import threading
import traceback

import pytest
import requests
from sqlalchemy import event
from sqlalchemy.pool import NullPool

from .async_apps import described
from .async_apps import engine_of
from .async_apps import lite_app
from .async_drills import REQUESTS
from .async_drills import async_database
from .async_drills import drill
from .async_drills import get_each
from .async_drills import get_from_clients
from .async_drills import serve
from .async_drills import wait_until_answered_alone

# As asyncpg and aiomysql raise it, in Lite's teardown: the task is
# asgiref's, on the teardown's loop; the future is the connection's, on the
# view's.
TEARDOWN_ON_ANOTHER_LOOP = re.compile(
    r"builtins\.RuntimeError: Task <Task pending name='Task-\d+'"
    r" coro=<AsyncToSync\.__call__\.<locals>\.new_loop_wrap\(\) running at \S+>"
    r" cb=\[_run_until_complete_cb\(\) at \S+\]>"
    r" got Future <Future pending( cb=\[BaseProtocol\._on_waiter_completed\(\)\])?>"
    r" attached to a different loop"
)


ASGIREF_REFUSES = (
    "RuntimeError: You cannot use AsyncToSync in the same thread as an async"
    " event loop - just await the async function directly."
)
ASYNCIO_REFUSES = (
    "RuntimeError: asyncio.run() cannot be called from a running event loop"
)


@pytest.fixture
def database(request, tmp_path):
    """Return an empty database reached through the test's driver."""
    with async_database(request.param, request, tmp_path) as database:
        yield database


def get_each_through_teardown(app, count=3):
    """Send ``count`` requests; return each as [status, None, None], or, for
    one whose teardown raised, [None, the error, the function that raised]."""
    client = app.test_client()
    answers = []
    for _ in range(count):
        try:
            response = client.get("/read")
        except Exception as error:
            innermost_of_lite = [
                frame.name
                for frame in traceback.extract_tb(error.__traceback__)
                if "flask_sqlalchemy_lite" in frame.filename
            ]
            answers.append([None, described(error), innermost_of_lite[-1:]])
        else:
            answers.append([response.status_code, None, None])
    return answers


@pytest.mark.parametrize("database", ["asyncpg", "aiomysql"], indirect=True)
@pytest.mark.parametrize("pool", ["queue", "null"])
def test_lite_on_asyncpg_and_aiomysql_fails_every_request_in_its_teardown(
    database, pool
):
    # Issue #25, from the first request on: the view's query works, and
    # closing the session on the teardown's loop fails. The test client
    # raises it; a server answers 500.
    options = {"poolclass": NullPool} if pool == "null" else {}
    app = lite_app(database.url, **options)

    report = drill(get_each_through_teardown, app, database)

    for status, error, raised_in in report["answers"]:
        assert status is None, report["answers"]
        assert TEARDOWN_ON_ANOTHER_LOOP.fullmatch(error), error
        assert raised_in == ["_close_async_sessions"]
    # No connection is given back or closed: each request's is left out,
    # open on the server, until the garbage collector finds it.
    assert report["counts"] == {"opened": 3, "checked_out": 3}
    assert report["server"] == 3


@pytest.mark.parametrize("database", ["psycopg", "aiosqlite"], indirect=True)
def test_lite_on_psycopg_and_aiosqlite_serves_requests_and_gives_connections_back(
    database,
):
    report = drill(get_each, lite_app(database.url), database)

    assert report["answers"] == [[200, None]] * REQUESTS
    assert report["counts"] == {"opened": 1, "checked_out": 0}
    if database.server is not None:
        assert report["server"] == 1
    assert report["said"] == [], report["said"]


@pytest.mark.parametrize("database", ["psycopg"], indirect=True)
def test_lite_closes_the_async_session_on_another_loop_in_another_thread(database):
    app = lite_app(database.url)
    where = {}

    def record(step):
        def listener(*args):
            where[step] = (asyncio.get_running_loop(), threading.get_ident())

        return listener

    engine = engine_of(app).sync_engine
    event.listen(engine, "checkout", record("view"))
    event.listen(engine, "checkin", record("teardown"))

    try:
        assert app.test_client().get("/read").status_code == 200
    finally:
        # psycopg's connection survives the change of loop: closed here on
        # a loop of its own, not left for the garbage collector to warn of
        # during a later test.
        asyncio.run(engine_of(app).dispose())

    # The view's loop and thread, and the teardown's: both asgiref's, both
    # new, and both closed or ended by now.
    (view_loop, view_thread), (teardown_loop, teardown_thread) = (
        where["view"],
        where["teardown"],
    )
    assert view_loop is not teardown_loop
    assert view_thread != teardown_thread != threading.get_ident()
    assert view_loop.is_closed()
    assert teardown_loop.is_closed()


@pytest.mark.parametrize("database", ["asyncpg", "aiomysql"], indirect=True)
def test_lite_with_null_pool_works_when_the_view_closes_its_own_session(database):
    # The view's close() ends the connection on the view's loop; the
    # teardown then has nothing to close.
    app = lite_app(database.url, close_in_view=True, poolclass=NullPool)

    report = drill(get_each, app, database)

    assert report["answers"] == [[200, None]] * REQUESTS
    assert report["counts"] == {"opened": REQUESTS, "checked_out": 0}
    assert report["server"] == 0
    assert report["said"] == [], report["said"]


@pytest.mark.slow
@pytest.mark.parametrize("database", ["psycopg"], indirect=True)
def test_lite_on_psycopg_under_gunicorn_gthread_serves_hundreds_of_requests(
    database, tmp_path
):
    # One request first, alone: the first requests at once hang on the
    # engine's first-connect lock (tests/test_async_failures.py).
    options = ("--worker-class", "gthread", "--threads", "4")
    with serve("lite", database, tmp_path / "gunicorn.log", *options) as gunicorn:
        assert get_from_clients(gunicorn.url + "/read", 1, 1) == [[200, None]]
        answers = get_from_clients(gunicorn.url + "/read", 4, 75)
        pool = requests.get(gunicorn.url + "/pool", timeout=30).json()
        server = database.server_connections()

    assert answers == [[200, None]] * 300, gunicorn.log()
    assert pool["checked_out"] == 0
    assert 1 <= pool["opened"] <= 4
    assert server == pool["opened"]


@pytest.mark.slow
@pytest.mark.parametrize("database", ["psycopg"], indirect=True)
def test_lite_under_gunicorn_gevent_serves_requests_one_at_a_time_not_at_once(
    database, tmp_path
):
    # gevent's threads are greenlets on one thread: while one request's
    # loop runs, asgiref refuses to start another's, in the view or in
    # Lite's teardown.
    options = ("--worker-class", "gevent", "--worker-connections", "4")
    with serve("lite", database, tmp_path / "gunicorn.log", *options) as gunicorn:
        wait_until_answered_alone(gunicorn.url + "/read")
        one_at_a_time = get_from_clients(gunicorn.url + "/read", 1, 50)
        at_once = get_from_clients(gunicorn.url + "/read", 4, 10)
        log = gunicorn.log()

    assert one_at_a_time == [[200, None]] * 50, log
    # At once, teardowns fail: gunicorn answers its own 500, not the app's
    # JSON, and logs asgiref's refusal, or asyncio's, for nearly each (a
    # few tracebacks of a run say other things, KeyError: '__import__').
    failed = at_once.count([500, None])
    assert failed >= 1, at_once
    assert at_once.count([200, None]) + failed == len(at_once), at_once
    assert log.count("Error handling request GET /read") >= failed, log
    refused = log.count(ASGIREF_REFUSES) + log.count(ASYNCIO_REFUSES)
    assert refused >= failed // 2, log
    assert "in do_teardown_appcontext" in log
