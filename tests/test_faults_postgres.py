"""Fault drills on a real PostgreSQL server: what step 4's settings are for.

Each drill shows the fault with step 4's defaults and with the setting that
answers it taken away (or on step 3, which has none). Killed connections
and a restart are drilled on MariaDB too (its own drills, "MySQL server has
gone away" first, are in tests/test_mariadb.py). SQLAlchemy's
documentation: "Dealing with Disconnects", "Using Connection Pools with
Multiprocessing or os.fork()".
"""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

import step04_pooling
from testbed.fork import in_forked_child
from testbed.gunicorn import Gunicorn
from testbed.load import requests_from_threads
from testbed.step_apps import initialize_databases
from testbed.watchers import QueryWatcher

from .conftest import skip_or_fail
from .drills import backend_pids
from .drills import fill_pool
from .drills import statuses_of
from .drills import terminate_backends
from .drills import wait_until_gone
from .preloading import preloaded_environment
from .steps import steps_from

PRE_PING_OFF = {"pool_pre_ping": False}
STEPS_WITH_POOLING = steps_from("step04_pooling")


@pytest.fixture
def backend():
    """Run every drill on PostgreSQL only."""
    return "postgresql"


# The drills that kill the app's connections or restart the server, on
# both servers.
ON_BOTH_SERVERS = pytest.mark.parametrize("backend", ["postgresql", "mariadb"])


@pytest.fixture
def server(backend, database_url, request):
    """Return the server of the test's database."""
    return request.getfixturevalue("postgres" if backend == "postgresql" else backend)


@pytest.fixture
def cluster(server):
    """Return the harness's own cluster, which the drill may stop and start."""
    if not server.can_stop:
        skip_or_fail("this drill stops the server: it needs the harness's own cluster")
    return server


class ServerConnections(QueryWatcher):
    """Sample how many server connections the test's database has."""

    def __init__(self, server, database_url, interval=0.01):
        super().__init__(
            server.admin_engine(),
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :name",
            {"name": make_url(database_url).database},
            interval,
        )
        self.most = 0

    def record(self, rows):
        self.most = max(self.most, rows[0][0])


def backend_pid_of(app):
    """Return the server pid of the connection the app's pool lends next."""
    with app.extensions["engine"].connect() as connection:
        return connection.execute(select(func.pg_backend_pid())).scalar_one()


# 1. Killed connections


@ON_BOTH_SERVERS
def test_killed_connections_go_unnoticed_with_step4_defaults(
    make_app, server, database_url
):
    app = make_app("step04_pooling")
    fill_pool(app, 3)

    killed = terminate_backends(server, database_url)

    assert statuses_of(app.test_client(), 10) == [(200, None)] * 10
    assert not killed & backend_pids(server, database_url)


@ON_BOTH_SERVERS
@pytest.mark.parametrize(
    ("step", "engine_options"),
    [("step04_pooling", PRE_PING_OFF), ("step03_teardown", {})],
)
def test_without_pre_ping_killed_connections_cost_a_503_each_at_most(
    step, engine_options, make_app, server, database_url
):
    app = make_app(step, engine_options=engine_options)
    fill_pool(app, 3)
    terminate_backends(server, database_url)

    outcomes = statuses_of(app.test_client(), 10)

    failures = [(status, error) for status, error in outcomes if status != 200]
    assert 1 <= len(failures) <= 3
    for status, error in failures:
        assert status == 503
        assert error.startswith("database unavailable")
    # SQLAlchemy invalidates the whole pool on a disconnect: then all is well.
    assert outcomes[-5:] == [(200, None)] * 5


# 2. The server's idle timeout


@pytest.mark.parametrize(
    ("engine_options", "expected"),
    [
        ({}, 200),  # step 4's defaults: pre-ping finds the connection dead
        ({**PRE_PING_OFF, "pool_recycle": 0.5}, 200),  # recycled before it dies
        ({**PRE_PING_OFF, "pool_recycle": -1}, 503),  # neither: the request fails
    ],
    ids=["defaults", "recycle-below-timeout", "no-recycle-no-pre-ping"],
)
def test_a_server_idle_timeout_needs_recycle_or_pre_ping(
    engine_options, expected, make_app, server, database_url
):
    name = make_url(database_url).database
    with server.admin_engine().connect() as connection:
        connection.exec_driver_sql(
            f"ALTER DATABASE \"{name}\" SET idle_session_timeout = '1s'"
        )
    app = make_app("step04_pooling", engine_options=engine_options)
    client = app.test_client()
    assert client.get("/messages").status_code == 200
    idle = backend_pids(server, database_url)

    # The app stays idle longer than the server allows.
    wait_until_gone(server, database_url, idle)

    assert client.get("/messages").status_code == expected
    assert client.get("/messages").status_code == 200


# 3. A server restart


@ON_BOTH_SERVERS
@pytest.mark.parametrize(
    ("step", "engine_options", "statuses"),
    [
        # Each step as shipped, no ENGINE_OPTIONS: its own pre-ping finds
        # the dead connections, in both databases from step 6 on.
        *(
            pytest.param(step, {}, [201] * 5, id=f"{step}-defaults")
            for step in STEPS_WITH_POOLING
        ),
        # Without pre-ping, the first write meets the dead connection; the
        # disconnect replaces the pool for the next.
        pytest.param(
            "step04_pooling",
            PRE_PING_OFF,
            [503, 201, 201, 201, 201],
            id="step04_pooling-pre-ping-off",
        ),
    ],
)
def test_a_server_restart_between_requests(
    step, engine_options, statuses, make_app, cluster
):
    client = make_app(step, engine_options=engine_options).test_client()
    # A write, so that each database's pool holds a connection as it dies.
    assert client.post("/messages", json={"text": "before"}).status_code == 201

    cluster.restart()

    writes = [client.post("/messages", json={"text": "after"}) for _ in range(5)]
    assert [write.status_code for write in writes] == statuses
    for write in writes:
        if write.status_code == 503:
            assert write.get_json()["error"].startswith("database unavailable")


# 4. Fork


def test_a_forked_child_uses_its_own_connection_and_the_parents_survives(
    make_app, server, database_url
):
    app = make_app("step04_pooling")
    parent_backend = backend_pid_of(app)

    child_backend = in_forked_child(
        lambda: (app.test_client().get("/messages").status_code, backend_pid_of(app))
    )

    assert child_backend[0] == 200
    assert child_backend[1] != parent_backend
    assert backend_pid_of(app) == parent_backend
    assert app.test_client().get("/messages").status_code == 200


def test_with_nothing_done_parent_and_child_share_one_connection(make_app):
    app = make_app("step03_teardown")
    parent_backend = backend_pid_of(app)

    child_backend = in_forked_child(lambda: backend_pid_of(app))

    # One server backend, so one socket, for two processes: their traffic
    # interleaves as soon as both use it at once.
    assert child_backend == parent_backend


def test_dispose_with_close_in_the_child_ends_the_parents_connection(
    make_app, server, database_url
):
    app = make_app("step03_teardown")
    parent_backend = backend_pid_of(app)

    # What the docs warn against: dispose() closes the inherited connections,
    # and closing one ends the server session that the parent is using.
    in_forked_child(lambda: app.extensions["engine"].dispose())

    wait_until_gone(server, database_url, {parent_backend})
    response = app.test_client().get("/messages")
    assert response.status_code == 503
    assert app.test_client().get("/messages").status_code == 200


def install_the_pid_recipe(engine):
    """SQLAlchemy's pid recipe (its pooling docs, "Using Connection Pools with
    Multiprocessing or os.fork()"): note each connection's process as it
    connects, and refuse it at checkout in any other process."""

    @event.listens_for(engine, "connect")
    def note_the_process(dbapi_connection, connection_record):
        connection_record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def refuse_another_process(dbapi_connection, connection_record, proxy):
        if connection_record.info["pid"] != os.getpid():
            connection_record.dbapi_connection = proxy.dbapi_connection = None
            raise DisconnectionError("the connection belongs to another process")


def last_statement_of(server, backend_pid):
    """Return the statement a server session ran last, and when it ended."""
    with server.admin_engine().connect() as connection:
        return connection.execute(
            text("SELECT query, state_change FROM pg_stat_activity WHERE pid = :pid"),
            {"pid": backend_pid},
        ).one()


def test_the_pid_recipe_lets_pre_ping_use_the_parents_connection_first(
    make_app, server
):
    # Step 3 has no fork safety of its own; the recipe and pre-ping are added.
    app = make_app("step03_teardown", engine_options={"pool_pre_ping": True})
    install_the_pid_recipe(app.extensions["engine"])
    parent_backend = backend_pid_of(app)
    before = last_statement_of(server, parent_backend)

    child_backend = in_forked_child(
        lambda: (app.test_client().get("/messages").status_code, backend_pid_of(app))
    )

    # The child got a connection of its own in the end...
    assert child_backend == [200, child_backend[1]]
    assert child_backend[1] != parent_backend
    # ...but SQLAlchemy pings before it runs checkout listeners: the ping
    # (";", the psycopg dialect's) went over the parent's socket, to the
    # parent's server session.
    after = last_statement_of(server, parent_backend)
    assert (before.query, after.query) == ("ROLLBACK", ";")
    assert after.state_change > before.state_change


def test_the_pid_recipe_lets_recycling_close_the_parents_connection_first(
    make_app, server, database_url
):
    app = make_app(
        "step03_teardown", engine_options={**PRE_PING_OFF, "pool_recycle": 0.2}
    )
    install_the_pid_recipe(app.extensions["engine"])
    parent_backend = backend_pid_of(app)
    time.sleep(0.3)

    in_forked_child(lambda: app.test_client().get("/messages").status_code)

    # Recycling comes before checkout listeners too: the child closed the
    # connection it inherited, which ends the parent's server session.
    wait_until_gone(server, database_url, {parent_backend})


def test_step4_pool_owner_leaves_the_parents_connection_untouched(make_app, server):
    app = make_app("step04_pooling", engine_options={"pool_recycle": 0.2})
    parent_backend = backend_pid_of(app)
    before = last_statement_of(server, parent_backend)
    time.sleep(0.3)

    in_forked_child(lambda: app.test_client().get("/messages").status_code)

    # Neither a ping nor a close reached the parent's session: the child
    # started on empty pools before it first used one.
    assert last_statement_of(server, parent_backend) == before


@pytest.mark.slow
def test_gunicorn_preload_workers_open_their_own_connections(
    server, database_url, tmp_path
):
    pid_file = tmp_path / "preload-backend.pid"
    initialize_databases(step04_pooling.create_app, {"DATABASE_URL": database_url})
    environment = preloaded_environment({"DATABASE_URL": database_url}, pid_file)
    with Gunicorn(
        "tests.preloaded_app:app", ["--preload", "--workers", "2"], environment
    ) as gunicorn:
        master_backend = int(pid_file.read_text())

        # Concurrent requests, so that both workers answer some.
        with ThreadPoolExecutor(max_workers=4) as executor:
            answers = list(
                executor.map(lambda _: get_and_pool(gunicorn.url), range(40))
            )
        assert {status for status, _ in answers} == {200}
        workers = {pool["pid"]: pool for _, pool in answers}
        assert len(workers) == 2
        for pool in workers.values():
            # The master's one connection, then each worker's own.
            assert pool["connects"] >= 2

        backends = backend_pids(server, database_url)
        # The master's connection is still there, never used by a worker.
        assert master_backend in backends
        assert len(backends) >= 3


def get_and_pool(url):
    """Send a request, then ask /pool of the same worker process."""
    with requests.Session() as session:
        status = session.get(url + "/messages", timeout=30).status_code
        return status, session.get(url + "/pool", timeout=30).json()


# 5. Pool limits


def test_the_server_never_sees_more_than_pool_size_plus_max_overflow(
    make_app, server, database_url
):
    app = make_app("step04_pooling", engine_options={"pool_size": 2, "max_overflow": 1})

    with ServerConnections(server, database_url) as connections:
        outcomes = requests_from_threads(app, threads=12, requests_each=30)

    assert [len(outcome) for outcome in outcomes] == [30] * 12
    # Twelve threads wanted connections at once; the server saw 3 at most.
    assert 2 <= connections.most <= 3


def test_a_checkout_that_waits_past_pool_timeout_answers_503(make_app):
    options = {"pool_size": 2, "max_overflow": 1, "pool_timeout": 1}
    app = make_app("step04_pooling", engine_options=options)
    engine = app.extensions["engine"]
    held = [engine.connect() for _ in range(3)]
    try:
        response = app.test_client().get("/messages")
    finally:
        for connection in held:
            connection.close()

    assert response.status_code == 503
    assert (
        "QueuePool limit of size 2 overflow 1 reached" in response.get_json()["error"]
    )
    assert app.test_client().get("/messages").status_code == 200


# 6. The database is down


def test_while_the_database_is_down_requests_answer_503_then_recover(serve, cluster):
    options = {"connect_args": {"connect_timeout": 3}}
    server = serve("step04_pooling", FLASK_ENGINE_OPTIONS=json.dumps(options))
    assert server.get("/messages").status_code == 200

    cluster.stop()
    try:
        for _ in range(3):
            # The client's timeout would fail this test, were it to hang.
            response = server.get("/messages", timeout=10)
            assert response.status_code == 503
            assert response.json()["error"].startswith("database unavailable")
    finally:
        cluster.start()

    assert server.get("/messages").status_code == 200
    assert server.post("/messages", json={"text": "back"}).status_code == 201
