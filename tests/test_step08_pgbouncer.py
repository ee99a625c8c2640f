"""Step 8: many processes on one PostgreSQL, with PgBouncer in front.

Real processes on loopback: a PostgreSQL whose max_connections is 20, the
real pgbouncer in transaction mode in front of it, and the step under
gunicorn, several instances standing in for hosts. Each drill runs its
failing variant too: the same thing without PgBouncer, or without the
step's setting.
"""

import re
import threading
import time
import uuid

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from step08_pgbouncer import create_app
from testbed.gunicorn import Instances
from testbed.load import send_load
from testbed.loopback import free_port
from testbed.pgbouncer import APP_CONNECTIONS_ALLOWED
from testbed.pgbouncer import HOW_TO_GET_PGBOUNCER
from testbed.pgbouncer import MAX_CONNECTIONS
from testbed.pgbouncer import POOL_SIZE
from testbed.pgbouncer import PgBouncer
from testbed.pgbouncer import SmallServer
from testbed.pgbouncer import find_pgbouncer
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.postgres import find_binaries
from testbed.step_apps import close_app
from testbed.step_apps import initialize_databases
from testbed.watchers import ConnectionWatcher

from .conftest import skip_or_fail

# PostgreSQL and PgBouncer start for these tests; the drills send load.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    """A PostgreSQL of the module's own, with max_connections = 20."""
    bindir = find_binaries()
    if bindir is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    if find_pgbouncer() is None:
        skip_or_fail(HOW_TO_GET_PGBOUNCER)
    server = SmallServer(bindir, free_port())
    yield server
    server.destroy()


@pytest.fixture
def pgbouncer(server):
    """A PgBouncer of the test's own: no server connection left by another."""
    pgbouncer = PgBouncer(server)
    yield pgbouncer
    pgbouncer.destroy()


class TwoWayDatabases:
    """The test's two databases, their tables created, reached two ways:
    straight to the server, and through PgBouncer."""

    def __init__(self, server, pgbouncer):
        self.names = {
            "DATABASE_URL": f"messages_{uuid.uuid4().hex[:12]}",
            "AUDIT_DATABASE_URL": f"audit_{uuid.uuid4().hex[:12]}",
        }
        for name in self.names.values():
            server.create_app_database(name)
        self.direct = {key: server.url_of(name) for key, name in self.names.items()}
        self.through_pgbouncer = {
            key: pgbouncer.url_of(name) for key, name in self.names.items()
        }
        # init-db straight on the server, so that PgBouncer's server
        # connections start with nothing of it.
        initialize_databases(create_app, self.direct)
        self.pgbouncer = pgbouncer
        self._server = server

    def urls(self, through_pgbouncer):
        """Return DATABASE_URL and AUDIT_DATABASE_URL, either way."""
        return self.through_pgbouncer if through_pgbouncer else self.direct

    def hold_server_connection(self, key="DATABASE_URL"):
        """Open a transaction through PgBouncer on a database, and keep it.

        PgBouncer hands out its idle server connections last in, first out:
        this takes the one the app used last, until the holder is closed.
        """
        holder = psycopg.connect(
            host="127.0.0.1",
            port=self.pgbouncer.port,
            user="app",
            dbname=self.names[key],
        )
        holder.execute("SELECT 1")
        return holder

    def drop(self):
        for name in self.names.values():
            self._server.drop_database(self._server.url_of(name))


@pytest.fixture
def databases(server, pgbouncer):
    """Two empty-tabled databases of the test's own, direct and via PgBouncer."""
    databases = TwoWayDatabases(server, pgbouncer)
    yield databases
    databases.drop()


@pytest.fixture
def app_on():
    """Return a function that creates step 8's app on the URLs it is given,
    whose tables exist already; the apps' pools are closed after the test."""
    apps = []

    def make(urls, **config):
        app = create_app({"TESTING": True, **urls, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        close_app(app)


def write(client, number):
    """Add a message; return the answer's status and error."""
    response = client.post("/messages", json={"text": f"message {number}"})
    return response.status_code, response.get_json().get("error")


# BEHIND_POOLER itself.


def test_behind_pooler_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLASK_BEHIND_POOLER", "true")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://app@127.0.0.1:1/none")
    monkeypatch.setenv("AUDIT_DATABASE_URL", "postgresql+psycopg://app@127.0.0.1:1/x")

    app = create_app()

    assert app.config["BEHIND_POOLER"] is True
    close_app(app)


@pytest.mark.parametrize(
    ("behind_pooler", "prepare_threshold", "pre_ping"),
    [(False, 5, True), (True, None, False)],
)
def test_behind_pooler_turns_off_prepared_statements_and_pre_ping(
    behind_pooler, prepare_threshold, pre_ping, databases, app_on
):
    app = app_on(databases.urls(True), BEHIND_POOLER=behind_pooler)

    for engine in app.extensions["engines"].values():
        with engine.connect() as connection:
            assert connection.connection.driver_connection.prepare_threshold == (
                prepare_threshold
            )
        # The QueuePool stays, pre-ping goes: measured in bench/scale_out.py.
        assert type(engine.pool).__name__ == "QueuePool"
        assert engine.pool._pre_ping is pre_ping


def test_connect_args_of_the_app_add_to_those_of_behind_pooler(databases, app_on):
    app = app_on(
        databases.urls(True),
        BEHIND_POOLER=True,
        ENGINE_OPTIONS={"connect_args": {"application_name": "reader"}},
    )

    with app.extensions["engine"].connect() as connection:
        driver_connection = connection.connection.driver_connection
        assert driver_connection.prepare_threshold is None
        assert driver_connection.info.parameter_status("application_name") == "reader"


@pytest.mark.parametrize("value", ["False", "yes", "1", "on"])
def test_behind_pooler_takes_true_or_false_and_nothing_else(value, monkeypatch):
    monkeypatch.setenv("FLASK_BEHIND_POOLER", value)

    with pytest.raises(ValueError, match="BEHIND_POOLER must be true or false"):
        create_app()


def test_behind_pooler_refuses_postgresql_through_another_driver():
    # Its settings are psycopg's. psycopg2 is installed beside the tests, so
    # the refusal is the guard's, not a missing driver's: psycopg2 would
    # take the settings in silence (it drops a keyword set to None), on a
    # driver no drill here runs behind PgBouncer.
    urls = {
        "DATABASE_URL": "postgresql+psycopg2://reader@127.0.0.1:9/messages",
        "AUDIT_DATABASE_URL": "postgresql+psycopg2://reader@127.0.0.1:9/audit",
    }
    with pytest.raises(ValueError, match="not postgresql\\+psycopg2"):
        create_app({**urls, "BEHIND_POOLER": True})

    # Without BEHIND_POOLER the same URLs make an app, on psycopg2: its
    # startup fails to connect (nothing listens on port 9), and says so.
    app = create_app({**urls, "BEHIND_POOLER": False})
    try:
        assert app.extensions["engine"].dialect.driver == "psycopg2"
    finally:
        close_app(app)


def test_behind_pooler_refuses_a_database_that_is_not_postgresql(tmp_path):
    with pytest.raises(ValueError, match="BEHIND_POOLER is for PostgreSQL"):
        create_app(
            {
                "DATABASE_URL": f"sqlite:///{tmp_path / 'messages.sqlite'}",
                "AUDIT_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.sqlite'}",
                "BEHIND_POOLER": True,
            }
        )


def test_the_whole_api_works_behind_pgbouncer(databases, app_on):
    client = app_on(databases.urls(True), BEHIND_POOLER=True).test_client()

    created = client.post("/messages", json={"text": "hello"})
    assert created.status_code == 201
    location = created.headers["Location"]
    assert client.get(location).get_json()["text"] == "hello"
    assert client.patch(location, json={"text": "hi"}).get_json()["text"] == "hi"
    assert client.delete(location).status_code == 204
    assert client.get(location).status_code == 404
    assert [entry["action"] for entry in client.get("/audit").get_json()] == [
        "create",
        "update",
        "delete",
    ]
    assert client.get("/").status_code == 200
    assert client.get("/pool").get_json()["audit"]["checked_out"] == 0


# Drill 1: too many clients.

# Three hosts, each three workers of four threads: 36 requests at once, each
# holding a connection to each database. Without PgBouncer each worker's
# pools may open (5 + 10) * 2 = 30 connections, 270 in all, against the 17
# that the server leaves the app's role.
HOSTS, WORKERS, THREADS = 3, 3, 4
# PostgreSQL 15 ends the second "for non-replication superuser
# connections", 16 and later "for roles with the SUPERUSER attribute".
REFUSED_FOR_TOO_MANY_CLIENTS = (
    "FATAL: +(sorry, too many clients already"
    "|remaining connection slots are reserved for)"
)
CLIENTS, REQUESTS_EACH = 48, 15


@pytest.mark.parametrize("through_pgbouncer", [False, True])
def test_too_many_clients(through_pgbouncer, server, databases, tmp_path):
    env = {**databases.urls(through_pgbouncer)}
    if through_pgbouncer:
        env["FLASK_BEHIND_POOLER"] = "true"
    instances = Instances(env, HOSTS, WORKERS, THREADS, tmp_path)
    try:
        with ConnectionWatcher(server) as watcher:
            answers = send_load(instances.urls, CLIENTS, REQUESTS_EACH)
    finally:
        instances.stop()

    statuses = [answer.status for answer in answers]
    assert len(answers) == CLIENTS * REQUESTS_EACH
    # Never a 500, never an answer that is not JSON.
    assert all(answer.is_json for answer in answers), instances.log()[-3000:]
    assert set(statuses) <= {201, 503}
    if through_pgbouncer:
        assert statuses.count(201) == len(answers)
        # PgBouncer opens at most POOL_SIZE server connections per database.
        assert max(watcher.most.values()) <= POOL_SIZE
        assert watcher.most_in_all <= 2 * POOL_SIZE
    else:
        refusals = [answer.error for answer in answers if answer.status == 503]
        assert refusals, "every request found a connection"
        # A role without superuser rights gets max_connections minus the
        # reserved slots. Past them the server refuses it, in one of two
        # ways: "too many clients" when the refused connections' own
        # start-ups fill even the reserved slots for a moment.
        assert all(
            re.search(REFUSED_FOR_TOO_MANY_CLIENTS, error) for error in refusals
        ), set(refusals)
        # The server gave the app's role what it allows it, and more than
        # PgBouncer ever opens; the watcher samples, so it may miss the peak.
        assert 2 * POOL_SIZE < watcher.most_in_all <= APP_CONNECTIONS_ALLOWED


def test_once_every_slot_is_taken_the_server_says_too_many_clients(server):
    engine = server.admin_engine()
    connections = []
    try:
        # A superuser may take the reserved slots too, until none is left.
        refusal = connect_until_refused(engine, connections)
        assert "FATAL:  sorry, too many clients already" in str(refusal)
        # A slot is free again once the closed connection's server process
        # has exited, a moment after the close.
        connections.pop().close()
        connections.append(connect_within(engine, seconds=10))
        in_use = (
            connections[-1]
            .exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend'"
            )
            .scalar()
        )
        assert in_use == MAX_CONNECTIONS
    finally:
        for connection in connections:
            connection.close()
        engine.dispose()


def connect_until_refused(engine, connections):
    """Open connections into ``connections`` until the server refuses one;
    return its error."""
    while len(connections) <= MAX_CONNECTIONS:
        try:
            connections.append(engine.connect())
        except OperationalError as error:
            return error
    raise AssertionError(f"the server accepted {len(connections)} connections")


def connect_within(engine, seconds):
    """Connect, trying again while the server is full, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return engine.connect()
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# Drill 2: prepared statements.


@pytest.mark.parametrize(("behind_pooler", "fails"), [(False, True), (True, False)])
def test_a_write_after_six_fails_on_another_server_connection(
    behind_pooler, fails, databases, app_on
):
    client = app_on(databases.urls(True), BEHIND_POOLER=behind_pooler).test_client()
    # The audit entry's INSERT, run for the sixth time on one pooled
    # connection, is prepared on the server connection it ran on. Its
    # transaction committed, so psycopg keeps it (it forgets on ROLLBACK).
    for number in range(6):
        assert write(client, number) == (201, None)

    # Another client now has that server connection: the next write's
    # transaction runs on another, which has no such statement.
    holder = databases.hold_server_connection("AUDIT_DATABASE_URL")
    try:
        status, error = write(client, 6)
    finally:
        holder.close()

    if fails:
        assert status == 503
        assert re.search(r'prepared statement "_pg3_\d+" does not exist', error)
    else:
        assert (status, error) == (201, None)


@pytest.mark.parametrize(("behind_pooler", "fails"), [(False, True), (True, False)])
def test_another_process_meets_a_statement_of_the_same_name(
    behind_pooler, fails, databases, app_on
):
    urls = databases.urls(True)
    first = app_on(urls, BEHIND_POOLER=behind_pooler).test_client()
    for number in range(6):
        assert write(first, number) == (201, None)

    # Another process, with connections of its own, numbers its statements
    # from _pg3_0 too, on the same server connection.
    second = app_on(urls, BEHIND_POOLER=behind_pooler).test_client()
    answers = [write(second, number) for number in range(6)]

    if fails:
        assert answers[:5] == [(201, None)] * 5
        assert answers[5][0] == 503
        assert 'prepared statement "_pg3_0" already exists' in answers[5][1]
    else:
        assert answers == [(201, None)] * 6


@pytest.mark.parametrize("database", ["DATABASE_URL", "AUDIT_DATABASE_URL"])
def test_requests_whose_last_transaction_rolls_back_never_bite(
    database, databases, app_on
):
    # Without the setting: reads end in ROLLBACK, and so do writes on the
    # messages database, whose answer reloads the message after the commit.
    # psycopg forgets its statements and their counts on each ROLLBACK.
    client = app_on(databases.urls(True), BEHIND_POOLER=False).test_client()
    for number in range(10):
        assert client.get("/messages").status_code == 200
        if database == "DATABASE_URL":
            assert write(client, number) == (201, None)

    holder = databases.hold_server_connection(database)
    try:
        assert client.get("/messages").status_code == 200
        assert client.get("/audit").status_code == 200
        if database == "DATABASE_URL":
            assert write(client, 10) == (201, None)
    finally:
        holder.close()


# Drill 3: session state.

# What a request may leave on its server connection, and how to look for it
# from the connection a later transaction runs on.
SESSION_STATE = {
    "SET": (
        "SET statement_timeout = '1234ms'",
        "SELECT current_setting('statement_timeout') = '1234ms'",
    ),
    "temporary table": (
        "CREATE TEMPORARY TABLE scratch (n integer)",
        "SELECT to_regclass('pg_temp.scratch') IS NOT NULL",
    ),
    "advisory lock": (
        "SELECT pg_advisory_lock(42)",
        "SELECT count(*) > 0 FROM pg_locks"
        " WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    "LISTEN": (
        "LISTEN news",
        "SELECT 'news' IN (SELECT pg_listening_channels())",
    ),
    "WITH HOLD cursor": (
        "DECLARE held CURSOR WITH HOLD FOR SELECT 1",
        "SELECT count(*) > 0 FROM pg_cursors WHERE name = 'held'",
    ),
}


def in_a_request(app, statement):
    """Run one statement the way a view would, commit, and return its value."""
    with app.test_request_context():
        session = app.extensions["session"]()
        result = session.execute(text(statement))
        value = result.scalar() if result.returns_rows else None
        session.commit()
        return value


@pytest.mark.parametrize("state", SESSION_STATE)
@pytest.mark.parametrize("through_pgbouncer", [False, True])
def test_session_state_does_not_follow_the_app_through_pgbouncer(
    state, through_pgbouncer, databases, app_on
):
    make_state, find_state = SESSION_STATE[state]
    app = app_on(databases.urls(through_pgbouncer), BEHIND_POOLER=through_pgbouncer)
    in_a_request(app, make_state)

    if not through_pgbouncer:
        # The app's pooled connection is its own server session: the next
        # request finds what the first left.
        assert in_a_request(app, find_state) is True
        return
    # Another client now has the server connection the first request used.
    holder = databases.hold_server_connection()
    try:
        # The next request runs elsewhere and finds nothing...
        assert in_a_request(app, find_state) is False
        # ... while the other client, which never asked for it, has it.
        assert holder.execute(find_state).fetchone()[0] is True
    finally:
        holder.close()


def test_set_local_lasts_one_transaction_and_leaves_nothing_behind(databases, app_on):
    app = app_on(databases.urls(True), BEHIND_POOLER=True)
    make_state, find_state = SESSION_STATE["SET"]
    with app.test_request_context():
        session = app.extensions["session"]()
        session.execute(text(make_state.replace("SET", "SET LOCAL")))
        assert session.execute(text(find_state)).scalar() is True
        session.commit()

    holder = databases.hold_server_connection()
    try:
        assert holder.execute(find_state).fetchone()[0] is False
    finally:
        holder.close()


# Drill 4: restarts.


@pytest.mark.parametrize(
    ("restart", "through_pgbouncer", "pre_ping", "statuses"),
    [
        # The app's pooled connection to PgBouncer died with it. Pre-ping
        # finds it dead and replaces it; without, one request pays with a
        # 503, and SQLAlchemy replaces the pool for the next.
        ("pgbouncer", True, False, [503, 200, 200]),
        ("pgbouncer", True, True, [200, 200, 200]),
        # Straight to the server, the same. Through PgBouncer, PgBouncer
        # replaces its server connections, and the app notices nothing.
        ("postgresql", False, False, [503, 200, 200]),
        ("postgresql", True, False, [200, 200, 200]),
        ("postgresql", True, True, [200, 200, 200]),
    ],
)
def test_a_restart_between_requests(
    restart, through_pgbouncer, pre_ping, statuses, server, databases, app_on
):
    app = app_on(
        databases.urls(through_pgbouncer),
        BEHIND_POOLER=through_pgbouncer,
        ENGINE_OPTIONS={"pool_pre_ping": pre_ping},
    )
    client = app.test_client()
    assert client.get("/messages").status_code == 200
    connects = client.get("/pool").get_json()["connects"]

    restart_now(restart, server, databases.pgbouncer)

    assert [client.get("/messages").status_code for _ in range(3)] == statuses
    if restart == "postgresql" and through_pgbouncer:
        # Not one new connection: the app's links to PgBouncer stayed up.
        assert client.get("/pool").get_json()["connects"] == connects


def restart_now(restart, server, pgbouncer):
    """Restart PgBouncer, or PostgreSQL behind it, and wait until it serves."""
    if restart == "pgbouncer":
        pgbouncer.restart()
    else:
        server.restart()


@pytest.mark.parametrize("restart", ["pgbouncer", "postgresql"])
def test_under_load_a_restart_costs_503s_at_most_and_the_app_recovers(
    restart, server, databases, tmp_path
):
    env = {**databases.urls(True), "FLASK_BEHIND_POOLER": "true"}
    instances = Instances(env, 2, 2, 2, tmp_path)
    stop = threading.Event()
    answers = []
    loader = threading.Thread(
        target=lambda: answers.extend(send_load(instances.urls, 4, 5000, stop=stop))
    )
    try:
        loader.start()
        time.sleep(1.5)
        stopped_at = time.monotonic()
        restart_now(restart, server, databases.pgbouncer)
        started_at = time.monotonic()
        time.sleep(4)
    finally:
        stop.set()
        loader.join()
        instances.stop()

    # Never a 500, never an answer that is not JSON.
    assert all(answer.is_json for answer in answers), instances.log()[-3000:]
    assert {answer.status for answer in answers} <= {201, 503}
    before = {answer.status for answer in answers if answer.answered < stopped_at}
    after = {answer.status for answer in answers if answer.sent > started_at + 2}
    assert before == {201}
    # Recovered by itself within two seconds, no instance restarted.
    assert after == {201}
