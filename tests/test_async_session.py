"""The AsyncSession example (async_session/): each ASYNC_PATTERN, proven.

In process first, on SQLite, PostgreSQL and MariaDB: the API and its
errors on every pattern, every connection and AsyncSession given back,
even when the view raised; "pooled", the naive setup, and what each
driver prints when it fails. Then under real servers, on PostgreSQL:
gunicorn's threads (gthread) and gevent workers, with and without
--preload, and uWSGI's threads, each with a bounded load; what the server
sees of the connections after it; and the connection a preloading master
opened, which no worker touches. docs/async.md cites these tests.
"""

import collections
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from flask import abort
from sqlalchemy import text
from sqlalchemy.engine import make_url

from async_session import create_app
from async_session import db
from testbed import ROOT
from testbed.gunicorn import Gunicorn
from testbed.load import send_load
from testbed.loopback import free_port
from testbed.loopback import wait_for_http
from testbed.stopping import stop_process

from .conftest import Databases

# The patterns that work, and the failing baseline.
WORKING_PATTERNS = ["one-loop", "loop-per-thread", "nullpool"]

# The load on a server: 20 clients of 20 writes each, a new HTTP
# connection each, spread over the workers.
CLIENTS = 20
REQUESTS_EACH = 20


@pytest.fixture
def database_url(backend, tmp_path, request):
    """Return the URL of an empty database on the test's backend."""
    databases = Databases(backend, tmp_path, request)
    yield databases.create("test")
    databases.drop()


def initialize(database_url):
    """Run init-db through an app of its own, closed after."""
    initializer = create_app({"DATABASE_URL": database_url})
    result = initializer.test_cli_runner().invoke(args=["init-db"])
    initializer.extensions["async_runner"].close()
    assert result.output == "Initialized the database.\n", result.output


@pytest.fixture
def make_app(database_url):
    """Return a factory of example apps on the test's database, tables created."""
    initialize(database_url)
    apps = []

    def make(pattern, **config):
        app = create_app(
            {"DATABASE_URL": database_url, "ASYNC_PATTERN": pattern, **config}
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["async_runner"].close()


def pool_of(client):
    """Return what /pool says."""
    return client.get("/pool").get_json()


def sessions_open(app):
    """Return how many of the app's AsyncSessions are open, outside a request."""
    counts = app.extensions["async_counts"].totals()
    return counts["sessions_opened"] - counts["sessions_closed"]


@pytest.mark.parametrize(
    ("url", "async_url"),
    [
        ("sqlite:///instance/a.sqlite", "sqlite+aiosqlite:///instance/a.sqlite"),
        ("postgresql://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg2://u@h/d", "postgresql+psycopg://u@h/d"),
        ("mariadb+pymysql://u@h/d", "mariadb+aiomysql://u@h/d"),
        ("mysql+pymysql://u@h/d", "mysql+aiomysql://u@h/d"),
    ],
)
def test_a_steps_database_url_is_turned_into_its_async_drivers(url, async_url):
    assert db.async_url(url).render_as_string(hide_password=False) == async_url


def test_an_unknown_pattern_is_refused_as_the_app_is_created(tmp_path):
    with pytest.raises(ValueError, match="ASYNC_PATTERN must be one of one-loop"):
        create_app(
            {
                "DATABASE_URL": f"sqlite:///{tmp_path / 'a.sqlite'}",
                "ASYNC_PATTERN": "one-loop-per-request",
            }
        )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
@pytest.mark.parametrize("pattern", WORKING_PATTERNS)
def test_each_pattern_serves_the_api_and_gives_every_connection_back(pattern, make_app):
    client = make_app(pattern).test_client()

    created = [
        client.post("/messages", json={"text": f"hello {number}"})
        for number in range(3)
    ]
    listed = client.get("/messages")
    one = client.get("/messages/2")
    missing = client.get("/messages/99")
    refused = [
        client.post("/messages", json={"txt": "hi"}),
        client.post("/messages", json={"text": ""}),
        client.post("/messages", data="text", content_type="text/plain"),
    ]
    after = client.get("/messages").get_json()

    assert [response.status_code for response in created] == [201] * 3
    assert created[1].headers["Location"] == "/messages/2"
    assert [message["text"] for message in listed.get_json()] == [
        "hello 0",
        "hello 1",
        "hello 2",
    ]
    assert one.get_json().keys() == {"id", "text", "created_at"}
    assert one.get_json()["text"] == "hello 1"
    assert (missing.status_code, missing.get_json()) == (
        404,
        {"error": "message 99 not found"},
    )
    assert [response.status_code for response in refused] == [400, 400, 415]
    assert all("error" in response.get_json() for response in refused)
    # Bad input changed nothing.
    assert after == listed.get_json()
    status = pool_of(client)
    assert (status["checked_out"], status["sessions_open"]) == (0, 0)
    assert status["pattern"] == pattern


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("pattern", WORKING_PATTERNS)
def test_the_session_is_closed_at_the_end_even_when_the_view_raised(
    pattern, make_app, postgres, database_url
):
    # Not TESTING: the app answers the error as it would in production.
    app = make_app(pattern)

    @app.get("/fails-after-a-query")
    async def fails_after_a_query():
        await db.get_session().execute(text("SELECT 1"))
        abort(409, "failed on purpose")

    client = app.test_client()
    answers = [client.get("/fails-after-a-query") for _ in range(5)]
    with postgres.admin_engine().connect() as admin:
        states = admin.execute(
            text("SELECT state FROM pg_stat_activity WHERE datname = :name"),
            {"name": make_url(database_url).database},
        ).scalars()
        states = sorted(states)

    assert [answer.status_code for answer in answers] == [409] * 5
    status = pool_of(client)
    assert (status["checked_out"], status["sessions_open"]) == (0, 0)
    # Rolled back: no connection was left "idle in transaction".
    assert "idle in transaction" not in states
    expected = {"nullpool": [], "one-loop": ["idle"], "loop-per-thread": ["idle"]}
    assert states == expected[pattern]


def share_of_before_request_and_view(app):
    """Send a request whose async before_request and async view each take
    the app context's AsyncSession; return whether they took the same."""
    sessions = []

    @app.before_request
    async def session_before_the_view():
        sessions.append(db.get_session())

    @app.get("/same-session")
    async def same_session():
        sessions.append(db.get_session())
        return {"same": sessions[0] is sessions[1]}

    return app.test_client().get("/same-session").get_json()["same"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_with_one_loop_the_app_contexts_session_outlives_one_call(make_app):
    app = make_app("one-loop")

    assert share_of_before_request_and_view(app) is True
    assert sessions_open(app) == 0


@pytest.mark.parametrize("backend", ["postgresql"])
def test_with_a_loop_per_call_each_call_has_its_own_session(make_app):
    app = make_app("nullpool")

    # The first call's loop, and its AsyncSession, ended with that call.
    assert share_of_before_request_and_view(app) is False
    assert sessions_open(app) == 0


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("pattern", WORKING_PATTERNS)
def test_an_unreachable_database_answers_503_and_the_app_recovers(
    pattern, make_app, postgres, database_url
):
    app = make_app(pattern)
    client = app.test_client()
    name = make_url(database_url).database
    assert client.post("/messages", json={"text": "before"}).status_code == 201
    with postgres.admin_engine().connect() as admin:
        # Every connection to the database, the pool's included, ended.
        admin.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = :name"
            ),
            {"name": name},
        )
        # And no new one allowed, for a while.
        admin.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        lost = client.get("/messages")
        admin.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    recovered = client.get("/messages")

    assert lost.status_code == 503
    assert lost.get_json()["error"].startswith("database unavailable (")
    assert recovered.status_code == 200
    assert [message["text"] for message in recovered.get_json()] == ["before"]
    status = pool_of(client)
    assert (status["checked_out"], status["sessions_open"]) == (0, 0)


# The naive setup: a pooled AsyncEngine, and Flask's own new event loop per
# call (asgiref's async_to_sync). What each driver does with it.


# Six writes, one at a time, through the test client, in a process of its
# own: the connections "pooled" leaks are collected there, not in a later
# test. It prints the statuses, then each error answer, one a line.
POOLED_PROBE = """
import sys
from async_session import create_app
app = create_app({"DATABASE_URL": sys.argv[1], "ASYNC_PATTERN": "pooled"})
client = app.test_client()
answers = [client.post("/messages", json={"text": "hi"}) for _ in range(6)]
print([answer.status_code for answer in answers])
print(client.get("/pool").get_json()["connects"])
for answer in answers:
    if answer.status_code != 201:
        print(answer.get_json()["error"])
"""


def probe_pooled(database_url):
    """Run POOLED_PROBE on the database; return its statuses, how many
    connections it opened, its error answers, and what it logged."""
    initialize(database_url)
    probe = subprocess.run(
        [sys.executable, "-W", "default", "-c", POOLED_PROBE, database_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    statuses, connects, *errors = probe.stdout.splitlines()
    return statuses, int(connects), errors, probe.stderr


def test_the_wsgi_module_makes_the_first_connection_before_any_request(tmp_path):
    # The engine's first connection runs under its first-connect lock, which
    # requests at once on loops of their own must not meet (docs/async.md,
    # nullpool): a worker that loads wsgi.py has made it already.
    loaded = subprocess.run(
        [
            *(sys.executable, "-c"),
            "from async_session.wsgi import app;"
            " print(app.extensions['async_counts'].totals()['connect'])",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'messages.sqlite'}",
            "FLASK_ASYNC_PATTERN": "nullpool",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["1"]


@pytest.mark.parametrize("backend", ["mariadb"])
def test_pooled_on_aiomysql_every_other_request_fails_on_another_loops_connection(
    database_url,
):
    statuses, connects, errors, log = probe_pooled(database_url)

    # The first opens a connection on its call's loop, gone once the call
    # is over. The second gets it from the pool, and its pre-ping fails on
    # that loop's streams; SQLAlchemy drops it, the third opens a new one.
    assert statuses == "[201, 503, 201, 503, 201, 503]"
    assert connects == 3
    for error in errors:
        assert error.startswith("request failed (RuntimeError): Task <Task pending")
        assert error.endswith(
            "got Future <Future pending> attached to a different loop"
        )
    # Dropping it fails too: closing needs the loop that is gone, and the
    # garbage collector finds the connection still open.
    assert "Exception terminating connection" in log
    assert "RuntimeError: Event loop is closed" in log
    assert "ResourceWarning: Unclosed connection" in log


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_pooled_on_psycopg_and_aiosqlite_one_request_at_a_time_succeeds(
    database_url,
):
    statuses, connects, errors, log = probe_pooled(database_url)

    # psycopg 3 and aiosqlite look up the running loop at each wait, so one
    # pooled connection serves every call's loop in turn.
    assert statuses == "[201, 201, 201, 201, 201, 201]"
    assert connects == 1
    assert errors == []


# Under real servers, on PostgreSQL.


@pytest.fixture
def served_database(postgres, tmp_path, request):
    """Return a PostgreSQL database with the example's tables, and its name."""
    databases = Databases("postgresql", tmp_path, request)
    url = databases.create("test")
    initialize(url)
    yield url, make_url(url).database
    databases.drop()


def server_connections(postgres, name):
    """Return each server connection to the database: (pid, state, state_change)."""
    with postgres.admin_engine().connect() as admin:
        return admin.execute(
            text(
                "SELECT pid, state, state_change FROM pg_stat_activity"
                " WHERE datname = :name ORDER BY pid"
            ),
            {"name": name},
        ).all()


def statuses_of(answers):
    """Count the answers by status, with the first few errors."""
    counted = collections.Counter(answer.status for answer in answers)
    errors = [answer.error for answer in answers if answer.status != 201][:3]
    return counted, errors


def pools_of_workers(url, workers, tries=60):
    """Ask /pool until each of ``workers`` worker processes has answered."""
    seen = {}
    for _ in range(tries):
        status = requests.get(url + "/pool", timeout=10).json()
        seen[status["pid"]] = status
        if len(seen) == workers:
            break
    return seen


GUNICORN_SERVERS = {
    "gthread": ("--workers", "2", "--threads", "8"),
    "gthread-preload": ("--workers", "2", "--threads", "8", "--preload"),
    "gevent": ("--worker-class", "gevent", "--worker-connections", "50"),
    "gevent-preload": (
        *("--worker-class", "gevent", "--worker-connections", "50", "--preload"),
    ),
}
# Most connections the server may see after the load, per pattern and
# server: each worker's pool keeps pool_size (5) idle; a loop per thread
# keeps one per thread that served (gthread: 8 and the main thread's);
# NullPool, none.
MOST_IDLE = {
    ("one-loop", "gthread"): 10,
    ("one-loop", "gevent"): 5,
    ("loop-per-thread", "gthread"): 18,
    ("nullpool", "gthread"): 0,
}


# Every working pattern under threads; under gevent, one-loop only. The two
# that run their calls on gevent's hub threadpool each left a request
# unanswered for 20 s in a loaded run: loop-per-thread 5 and then 1 of 400
# (a helper's run, a full suite on five workers), nullpool 1 of 400 (a CI
# run); the cause is not found (docs/async.md). --preload, which forks from
# a master that built the app, with the pattern the page advises (uWSGI
# preloads every pattern).
GUNICORN_RUNS = [
    ("one-loop", "gthread"),
    ("one-loop", "gevent"),
    ("one-loop", "gthread-preload"),
    ("one-loop", "gevent-preload"),
    ("loop-per-thread", "gthread"),
    ("nullpool", "gthread"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("pattern", "server"), GUNICORN_RUNS)
def test_under_gunicorn_every_request_succeeds_and_every_connection_comes_back(
    pattern, server, served_database, postgres, tmp_path
):
    url, name = served_database
    options = GUNICORN_SERVERS[server]
    workers = int(options[1]) if options[0] == "--workers" else 1
    preload = "--preload" in options
    with Gunicorn(
        "async_session.wsgi:app",
        [*options, "--log-level", "warning", "--graceful-timeout", "1"],
        {"DATABASE_URL": url, "FLASK_ASYNC_PATTERN": pattern},
        tmp_path / "gunicorn.log",
        process_group=True,
    ) as gunicorn:
        before = server_connections(postgres, name)
        load_start = time.monotonic()
        answers = send_load([gunicorn.url], CLIENTS, REQUESTS_EACH, timeout=20)
        seconds = time.monotonic() - load_start
        pools = pools_of_workers(gunicorn.url, workers)
        after = server_connections(postgres, name)
        log = gunicorn.log()

    counted, errors = statuses_of(answers)
    assert counted == {201: CLIENTS * REQUESTS_EACH}, (errors, log)
    assert seconds < 60
    # Each worker: nothing checked out, no AsyncSession left open.
    assert len(pools) == workers
    for status in pools.values():
        assert (status["checked_out"], status["sessions_open"]) == (0, 0), status
    # What the server sees: every connection idle, none in a transaction.
    assert {state for _, state, _ in after} <= {"idle"}, after
    most = MOST_IDLE[(pattern, server.removesuffix("-preload"))]
    assert len(after) <= most + (1 if preload and pattern != "nullpool" else 0)
    if preload and pattern != "nullpool":
        # The master checked the database before it forked: its connection
        # is still open, and no worker touched it.
        [(master_backend, _, master_state_change)] = before
        [touched] = [row for row in after if row[0] == master_backend]
        assert touched[2] == master_state_change
        assert all(status["pid"] != master_backend for status in pools.values())


def serve_under_uwsgi(database_url, pattern, log_path):
    """Start uWSGI's master, which loads the app and forks 2 processes of 4
    threads; return it and its URL."""
    port = free_port()
    with open(log_path, "wb") as log:
        uwsgi = subprocess.Popen(
            [
                *(os.path.join(os.path.dirname(sys.executable), "uwsgi"), "--master"),
                *("--processes", "2", "--threads", "4"),
                *("--http-socket", f"127.0.0.1:{port}", "--disable-logging"),
                *("--module", "async_session.wsgi:app"),
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": database_url,
                "FLASK_ASYNC_PATTERN": pattern,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return uwsgi, f"http://127.0.0.1:{port}"


@pytest.mark.slow
@pytest.mark.parametrize("pattern", WORKING_PATTERNS)
def test_under_uwsgi_each_forked_worker_serves_on_a_loop_and_pool_of_its_own(
    pattern, served_database, postgres, tmp_path
):
    url, name = served_database
    uwsgi, server_url = serve_under_uwsgi(url, pattern, tmp_path / "uwsgi.log")
    try:
        wait_for_http(server_url, uwsgi)
        before = server_connections(postgres, name)
        answers = send_load([server_url], CLIENTS, REQUESTS_EACH, timeout=20)
        pools = pools_of_workers(server_url, 2)
        after = server_connections(postgres, name)
    finally:
        # SIGINT ends the master and its workers (SIGTERM reloads).
        stop_process(uwsgi, signal.SIGINT)

    counted, errors = statuses_of(answers)
    log = (tmp_path / "uwsgi.log").read_text(errors="replace")
    assert counted == {201: CLIENTS * REQUESTS_EACH}, (errors, log)
    assert len(pools) == 2
    for status in pools.values():
        assert (status["checked_out"], status["sessions_open"]) == (0, 0), status
    assert {state for _, state, _ in after} <= {"idle"}, after
    if pattern != "nullpool":
        # uWSGI forks in C: no fork hook ran, the pid check did.
        [(master_backend, _, master_state_change)] = before
        [touched] = [row for row in after if row[0] == master_backend]
        assert touched[2] == master_state_change
    else:
        assert before == []
