"""A pooled AsyncEngine in Flask's async views, on four drivers: what breaks.

Flask runs an async view through asgiref's ``async_to_sync``, which starts a
new event loop in a new thread for every call and closes it after. A
connection that an AsyncEngine's pool keeps from one request was opened on
a loop that is now closed, and the next request uses it on another: what
happens then is the driver's business, and SQLAlchemy's docs say not to do
it ("Using multiple asyncio event loops": dispose of the engine, or use
NullPool). Each test sends its requests through the test client or a
real gunicorn, and reads the error each driver raises, word for word, what
the pool and the server hold afterwards, and what collecting garbage prints.

tests/async_apps.py is the app: an AsyncEngine made once, an ``async def``
view that reads one row in ``async with AsyncSession(engine)``.
"""

import re

import pytest
import requests
from sqlalchemy.pool import NullPool

from testbed.threads import in_threads

from .async_apps import engine_app
from .async_drills import DRIVERS
from .async_drills import REQUESTS
from .async_drills import async_database
from .async_drills import drill
from .async_drills import get_each
from .async_drills import get_from_clients
from .async_drills import serve

# What each error starts and ends with; between them, asyncio's repr of the
# task, with its number and the path of asgiref's sync.py.
ASGIREF_TASK = (
    r"Task <Task pending name='Task-\d+'"
    r" coro=<AsyncToSync\.__call__\.<locals>\.new_loop_wrap\(\) running at \S+>"
    r" cb=\[_run_until_complete_cb\(\) at \S+\]>"
)
ASYNCPG_DIFFERENT_LOOP = re.compile(
    rf"builtins\.RuntimeError: {ASGIREF_TASK} got Future <Future pending"
    r" cb=\[BaseProtocol\._on_waiter_completed\(\)\]> attached to a different loop"
)
ASYNCPG_IN_PROGRESS = (
    "sqlalchemy.exc.InterfaceError:"
    " (sqlalchemy.dialects.postgresql.asyncpg.InterfaceError)"
    " cannot perform operation: another operation is in progress\n"
    "[SQL: SELECT 1]"
)
AIOMYSQL_DIFFERENT_LOOP = re.compile(
    r"builtins\.RuntimeError: Task <Task pending name='Task-\d+'"
    r" coro=<AsyncSession\.close\(\) running at \S+>"
    r" cb=\[shield\.<locals>\._inner_done_callback\(\) at \S+\]>"
    r" got Future <Future pending> attached to a different loop"
)
QUEUE_ON_ANOTHER_LOOP = re.compile(
    # What follows maxsize depends on the moment: "_getters[1]", "tasks=1".
    r"builtins\.RuntimeError: <Queue at 0x[0-9a-f]+ maxsize=1[^>]*>"
    r" is bound to a different event loop"
)
LOCK_ON_ANOTHER_LOOP = (
    "builtins.RuntimeError: <asyncio.locks.Lock object at 0x… [locked, waiters:1]>"
    " is bound to a different event loop"
)
GC_NON_CHECKED_IN = re.compile(
    r"SAWarning: The garbage collector is trying to clean up non-checked-in"
    r" connection <AdaptedConnection <aiomysql\.connection\.Connection object"
    r" at 0x[0-9a-f]+>>, which will be terminated\."
)
TERMINATE_ON_CLOSED_LOOP = re.compile(
    r"Exception terminating connection <AdaptedConnection"
    r" <aiomysql\.connection\.Connection object at 0x[0-9a-f]+>>"
    r" \| RuntimeError: Event loop is closed"
)


@pytest.fixture
def database(request, tmp_path):
    """Return an empty database reached through the test's driver."""
    with async_database(request.param, request, tmp_path) as database:
        yield database


def statuses_and_errors(report):
    """Return a drill's answers as a list of statuses and a list of errors."""
    return [status for status, _ in report["answers"]], [
        error for _, error in report["answers"]
    ]


@pytest.mark.parametrize("database", ["asyncpg"], indirect=True)
def test_asyncpg_answers_the_first_request_then_fails_every_later_one(database):
    report = drill(get_each, engine_app(database.url), database)

    statuses, errors = statuses_and_errors(report)
    assert statuses == [200] + [500] * (REQUESTS - 1)
    # The second request: the pooled connection's futures belong to the
    # first request's loop.
    assert ASYNCPG_DIFFERENT_LOOP.fullmatch(errors[1]), errors[1]
    # From the third on: asyncpg still thinks the second's query runs.
    for error in errors[2:]:
        assert error.startswith(ASYNCPG_IN_PROGRESS), error
    # The broken connection went back to the pool, and stays there: one
    # connection, on the server too, that every request gets and fails on.
    assert report["counts"] == {"opened": 1, "checked_out": 0}
    assert report["server"] == report["server_after_collecting"] == 1
    assert report["said"] == [], report["said"]


@pytest.mark.parametrize("database", ["aiomysql"], indirect=True)
def test_aiomysql_fails_every_second_request_and_leaks_the_connection_each_time(
    database,
):
    report = drill(get_each, engine_app(database.url), database)

    statuses, errors = statuses_and_errors(report)
    # A failed request takes the pooled connection with it, so the next
    # one opens a fresh connection, which works, and goes back to the pool.
    assert statuses == [200, 500] * (REQUESTS // 2)
    for error in errors[1::2]:
        assert AIOMYSQL_DIFFERENT_LOOP.fullmatch(error), error
    # Each failed connection is neither checked in nor closed: the pool
    # counts it out, and the server keeps it.
    failed = REQUESTS // 2
    assert report["counts"] == {"opened": failed, "checked_out": failed}
    assert report["server"] == failed
    # Until the garbage collector finds each: SQLAlchemy warns, and tries
    # to terminate it on its closed loop, which fails. When its socket
    # closes is up to what still holds it (the frames of the ended threads'
    # greenlets): in this child, once the collector has run.
    said, logged = report["said"], report["logged"]
    assert sum(bool(GC_NON_CHECKED_IN.match(line)) for line in said) == failed, said
    terminated = [line for line in logged if TERMINATE_ON_CLOSED_LOOP.fullmatch(line)]
    assert len(terminated) == failed, logged


@pytest.mark.parametrize("database", ["psycopg", "aiosqlite"], indirect=True)
def test_psycopg_and_aiosqlite_serve_one_request_after_another_on_new_loops(
    database,
):
    # Neither driver ties a connection to the loop that opened it: psycopg
    # asks for the running loop at each wait, aiosqlite runs SQLite in a
    # thread of its own.
    report = drill(
        lambda app: get_each(app, count=3 * REQUESTS),
        engine_app(database.url),
        database,
    )

    assert report["answers"] == [[200, None]] * (3 * REQUESTS)
    assert report["counts"] == {"opened": 1, "checked_out": 0}
    if database.server is not None:
        assert report["server"] == 1
    assert report["said"] == [], report["said"]


@pytest.mark.parametrize("database", ["psycopg", "aiosqlite"], indirect=True)
def test_a_request_that_waits_for_a_pooled_connection_fails_on_the_queues_loop(
    database,
):
    # The pool's queue is an asyncio.Queue: the first request that waits for
    # a connection binds it to its loop, and every later one that waits, on
    # a loop of its own, fails. The driver plays no part.
    app = engine_app(
        database.url, hold_seconds=0.05, pool_size=1, max_overflow=0, pool_timeout=1
    )

    def from_four_threads(app):
        each = in_threads(lambda number, stop: get_each(app, count=4), 4)
        return [answer for answers in each for answer in answers]

    report = drill(from_four_threads, app, database)

    errors = {error for status, error in report["answers"] if status != 200}
    assert errors, report["answers"]
    for error in errors:
        assert QUEUE_ON_ANOTHER_LOOP.fullmatch(error), error
    assert [200, None] in report["answers"]
    assert report["counts"] == {"opened": 1, "checked_out": 0}
    assert report["said"] == [], report["said"]


@pytest.mark.parametrize("database", list(DRIVERS), indirect=True)
def test_null_pool_serves_every_request_with_a_connection_of_its_own(database):
    # What SQLAlchemy's docs advise for an engine shared by event loops:
    # every connection is opened and closed on the request's own loop.
    report = drill(get_each, engine_app(database.url, poolclass=NullPool), database)

    assert report["answers"] == [[200, None]] * REQUESTS
    assert report["counts"] == {"opened": REQUESTS, "checked_out": 0}
    if database.server is not None:
        assert report["server"] == 0
    assert report["said"] == [], report["said"]


# Under gunicorn's threaded worker: one process, THREADS threads, each
# request's async view on a loop of its own all the same.
THREADS = 4
# How long a client waits for an answer before it calls the request hung.
HANG_SECONDS = 2
GTHREAD = ("--worker-class", "gthread", "--threads", str(THREADS))


@pytest.mark.slow
@pytest.mark.parametrize("database", ["asyncpg"], indirect=True)
def test_under_gunicorn_gthread_asyncpg_fails_after_the_first_request(
    database, tmp_path
):
    with serve("engine", database, tmp_path / "gunicorn.log", *GTHREAD) as gunicorn:
        answers = get_from_clients(gunicorn.url + "/read", 1, 12)
        pool = requests.get(gunicorn.url + "/pool", timeout=30).json()
        server = database.server_connections()

    statuses = [status for status, _ in answers]
    assert statuses == [200] + [500] * 11, gunicorn.log()
    assert ASYNCPG_DIFFERENT_LOOP.fullmatch(answers[1][1]), answers[1]
    for _, error in answers[2:]:
        assert error.startswith(ASYNCPG_IN_PROGRESS), error
    assert (pool["opened"], pool["checked_out"], server) == (1, 0, 1)


@pytest.mark.slow
@pytest.mark.parametrize("database", ["psycopg"], indirect=True)
def test_under_gunicorn_gthread_psycopg_serves_hundreds_of_requests(database, tmp_path):
    # As many clients as threads: no request ever waits for a connection.
    # One request first, alone: see the test after next.
    with serve("engine", database, tmp_path / "gunicorn.log", *GTHREAD) as gunicorn:
        assert get_from_clients(gunicorn.url + "/read", 1, 1) == [[200, None]]
        answers = get_from_clients(gunicorn.url + "/read", THREADS, 75)
        pool = requests.get(gunicorn.url + "/pool", timeout=30).json()
        server = database.server_connections()

    assert answers == [[200, None]] * (THREADS * 75), gunicorn.log()
    assert pool["checked_out"] == 0
    assert 1 <= pool["opened"] <= THREADS
    assert server == pool["opened"]


@pytest.mark.slow
@pytest.mark.parametrize("database", ["asyncpg"], indirect=True)
def test_under_gunicorn_gthread_null_pool_opens_one_connection_per_request(
    database, tmp_path
):
    log_path = tmp_path / "gunicorn.log"
    with serve("engine", database, log_path, *GTHREAD, pool="null") as gunicorn:
        assert get_from_clients(gunicorn.url + "/read", 1, 1) == [[200, None]]
        answers = get_from_clients(gunicorn.url + "/read", THREADS, 10)
        pool = requests.get(gunicorn.url + "/pool", timeout=30).json()
        server = database.server_connections()

    assert answers == [[200, None]] * (THREADS * 10), gunicorn.log()
    assert (pool["opened"], pool["checked_out"], server) == (THREADS * 10 + 1, 0, 0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("database", "pool"),
    [("psycopg", "queue"), ("asyncpg", "null")],
    indirect=["database"],
)
def test_under_gunicorn_gthread_the_first_requests_at_once_hang(
    database, pool, tmp_path
):
    # The engine's first connection runs its "first_connect" event under a
    # lock that is asyncio's (AsyncAdaptedLock). Here it takes 200 ms more,
    # so that the other requests come meanwhile: the first to wait binds
    # the lock to its loop and is never woken when another thread releases
    # it, and no timeout ends its wait (gunicorn's graceful stop ends the
    # worker); the others, on loops of their own, fail at once.
    options = (*GTHREAD, "--graceful-timeout", "1")
    log_path = tmp_path / "gunicorn.log"
    with serve(
        "engine",
        database,
        log_path,
        *options,
        pool=pool,
        ASYNC_FIRST_CONNECT_SECONDS="0.2",
    ) as gunicorn:
        answers = get_from_clients(
            gunicorn.url + "/read", THREADS, 1, timeout=HANG_SECONDS
        )

    answers = [
        [status, re.sub(r"0x[0-9a-f]+", "0x…", error or "") or None]
        for status, error in answers
    ]
    assert sorted(answers, key=str) == sorted(
        [[200, None], [None, "no answer"], *[[500, LOCK_ON_ANOTHER_LOOP]] * 2], key=str
    ), answers
