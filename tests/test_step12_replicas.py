"""Step 12: reads from a PostgreSQL standby, writes to the primary, and no
client's own write goes missing from its next reads.

On a primary and a hot standby of the tests' own (testbed/replicas.py),
whose replay a test pauses to make the standby lag for as long as it
wants. The failing variant is the routing Session of SQLAlchemy's
documentation ("Custom Vertical Partitioning"), as written.
"""

import json
import logging
import random
import re
import threading
import time

import pytest
import requests
from sqlalchemy import create_engine
from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import Delete
from sqlalchemy.sql import Update

from step12_replicas import create_app
from step12_replicas import db
from step12_replicas.replicas import POSITION_COOKIE
from testbed.gunicorn import Gunicorn
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.postgres import find_binaries
from testbed.replicas import Replication
from testbed.step_apps import close_app
from testbed.threads import in_threads

from .conftest import skip_or_fail

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def replication():
    """Return a primary and a hot standby for the module, deleted after."""
    bindir = find_binaries()
    if bindir is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    pair = Replication(bindir)
    yield pair
    pair.destroy()


@pytest.fixture
def databases(replication):
    """Return the step's two databases on the primary, emptied after."""
    urls = {
        "DATABASE_URL": replication.primary.create_database(),
        "AUDIT_DATABASE_URL": replication.primary.create_database(),
    }
    yield urls
    # A test that paused replay leaves it running again.
    replication.standby.resume_replay()
    for url in urls.values():
        replication.primary.drop_database(url)


@pytest.fixture
def app(databases, replication):
    """Return the step's app on the pair, its tables made on the primary
    and replayed on the standby."""
    standby_url = replication.standby.url_of(databases["DATABASE_URL"])
    app = create_app(
        {
            "TESTING": True,
            **databases,
            "REPLICA_DATABASE_URLS": [standby_url],
            "REPLICA_RETRY_SECONDS": 0.2,
        }
    )
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.output.endswith("Initialized the database.\n"), result.output
    replication.standby.wait_for_replay()
    yield app
    close_app(app)


def reads_went_to(app):
    """Return where the app's last reads went: "standby" or "primary"."""
    return app.extensions["routing"].last_reads["server"]


def docs_routing_session(app):
    """Return SQLAlchemy's documented routing Session on the app's engines,
    as written: flushes, UPDATE and DELETE to the leader (the primary),
    every other statement to a follower (the standby), the other class's
    to its own engine (the audit database)."""
    engines = {
        "leader": app.extensions["engine"],
        "other": app.extensions["audit_engine"],
        "follower1": app.extensions["engines"]["standby"],
    }
    AuditBase = app.extensions["models"].declared.bases["audit"]

    class RoutingSession(Session):
        def get_bind(self, mapper=None, clause=None, **kw):
            if mapper and issubclass(mapper.class_, AuditBase):
                return engines["other"]
            elif self._flushing or isinstance(clause, (Update, Delete)):
                return engines["leader"]
            else:
                return engines[random.choice(["follower1"])]

    return RoutingSession


def use_the_docs_router(app):
    """Give the app the documented routing Session in place of its own."""
    app.extensions["session"] = scoped_session(
        sessionmaker(class_=docs_routing_session(app)),
        scopefunc=db.current_app_context,
    )


# Proof 1: a client reads its own write; others read from the standby.


def test_a_read_right_after_your_write_is_fresh_while_the_standby_lags(
    app, replication
):
    writer, other = app.test_client(), app.test_client()
    replication.standby.pause_replay()

    created = writer.post("/messages", json={"text": "written while it lags"})
    assert created.status_code == 201, created.json
    # The answer gives the client the primary's WAL position after its
    # commit, which its next requests send back.
    assert writer.get_cookie(POSITION_COOKIE) is not None

    # The writer's read goes to the primary: the standby has not replayed
    # its write.
    assert writer.get("/messages").json == [created.json]
    assert reads_went_to(app) == "primary"
    # Another client's read goes to the standby, which lags.
    assert other.get("/messages").json == []
    assert reads_went_to(app) == "standby"

    # Once the standby has replayed the write, the writer reads there too,
    # and the cookie goes: its later reads check nothing.
    replication.standby.resume_replay()
    replication.standby.wait_for_replay()
    assert writer.get("/messages").json == [created.json]
    assert reads_went_to(app) == "standby"
    assert writer.get_cookie(POSITION_COOKIE) is None


def test_a_request_that_reads_caught_up_then_writes_keeps_the_cookie(app, replication):
    client = app.test_client()
    created = client.post("/messages", json={"text": "first"})
    replication.standby.wait_for_replay()
    first_position = client.get_cookie(POSITION_COOKIE).value

    # The PATCH reads the message on the standby, which has the client's
    # last write (the cookie could go), then writes: its answer gives the
    # new position, and says nothing else of the cookie.
    renamed = client.patch(created.headers["Location"], json={"text": "second"})
    assert renamed.status_code == 200, renamed.json
    said = [
        header
        for header in renamed.headers.getlist("Set-Cookie")
        if header.startswith(f"{POSITION_COOKIE}=")
    ]
    assert len(said) == 1, said
    assert client.get_cookie(POSITION_COOKIE).value != first_position


def test_on_the_docs_router_a_write_fails_to_read_itself_back(app, replication):
    use_the_docs_router(app)
    writer = app.test_client()
    replication.standby.pause_replay()

    # The flush goes to the leader, and commits; the answer then reads the
    # new row's id, expired by the commit, on the follower, which has not
    # replayed it: the row "has been deleted", and the request answers 503
    # for a write that is committed.
    created = writer.post("/messages", json={"text": "written while it lags"})
    assert created.status_code == 503, created.json
    assert "ObjectDeletedError" in created.json["error"]
    # The writer's next read is stale: its message is missing.
    assert writer.get("/messages").json == []
    replication.standby.resume_replay()
    replication.standby.wait_for_replay()
    assert [message["text"] for message in writer.get("/messages").json] == [
        "written while it lags"
    ]


# Proof 2: every write reaches the primary.


def test_every_write_statement_goes_to_the_primary(app):
    with app.app_context():
        session = db.get_session()
        Message = db.get_models().Message
        session.execute(insert(Message).values(text="inserted"))
        session.execute(update(Message).values(text="updated"))
        locked = session.scalars(select(Message).with_for_update()).all()
        assert [message.text for message in locked] == ["updated"]
        session.execute(delete(Message))
        session.commit()
        assert reads_went_to(app) == "primary"


def test_on_the_docs_router_an_insert_goes_to_the_standby_and_fails(app):
    use_the_docs_router(app)
    with app.app_context():
        session = db.get_session()
        Message = db.get_models().Message
        with pytest.raises(
            DBAPIError, match="cannot execute INSERT in a read-only transaction"
        ):
            session.execute(insert(Message).values(text="inserted"))


# Proof 3: your own transaction.


def test_a_flushed_row_is_read_back_in_its_own_transaction(app):
    with app.app_context():
        session = db.get_session()
        Message = db.get_models().Message
        session.add(Message(text="flushed, not committed"))
        session.flush()
        found = session.scalars(select(Message.text)).all()
        assert found == ["flushed, not committed"]
        assert reads_went_to(app) == "primary"
        session.rollback()


# Proof 4: a server stops.


def test_when_the_standby_stops_reads_fall_back_to_the_primary_and_return(
    app, replication
):
    client = app.test_client()
    assert client.post("/messages", json={"text": "one"}).status_code == 201
    replication.standby.wait_for_replay()
    reader = app.test_client()
    assert reader.get("/messages").status_code == 200
    assert reads_went_to(app) == "standby"

    replication.standby.stop()
    try:
        answers = [reader.get("/messages") for _ in range(5)]
        assert [answer.status_code for answer in answers] == [200] * 5
        assert all(len(answer.json) == 1 for answer in answers)
        assert reads_went_to(app) == "primary"
    finally:
        replication.standby.start()
    replication.standby.wait_for_replay()
    # Retried once REPLICA_RETRY_SECONDS have passed.
    for _ in range(50):
        assert reader.get("/messages").status_code == 200
        if reads_went_to(app) == "standby":
            break
    assert reads_went_to(app) == "standby"


def test_a_read_whose_standby_drops_its_connection_runs_again_on_the_primary(
    app, replication
):
    standby = app.extensions["engines"]["standby"]
    with app.app_context():
        session = db.get_session()
        Message = db.get_models().Message
        assert session.scalars(select(Message)).all() == []
        assert reads_went_to(app) == "standby"
        # The standby ends the transaction's connection, as a restart does.
        pid = session.connection(bind_arguments={"bind": standby}).scalar(
            text("SELECT pg_backend_pid()")
        )
        with replication.standby.admin_engine().connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

        # The next read of the transaction fails there, and runs again on
        # the primary; the standby is left alone REPLICA_RETRY_SECONDS.
        assert session.scalars(select(Message)).all() == []
        assert app.extensions["routing"].last_reads == {
            "server": "primary",
            "why": "standby dropped the read",
        }
        session.rollback()


def test_when_the_primary_stops_writes_answer_503_and_reads_go_on(app, replication):
    client = app.test_client()
    assert client.post("/messages", json={"text": "one"}).status_code == 201
    replication.standby.wait_for_replay()
    reader = app.test_client()

    replication.primary.stop()
    try:
        refused = client.post("/messages", json={"text": "two"})
        assert refused.status_code == 503, refused.json
        assert refused.is_json
        listed = reader.get("/messages")
        assert listed.status_code == 200
        assert [message["text"] for message in listed.json] == ["one"]
        assert reads_went_to(app) == "standby"
    finally:
        replication.primary.start()
    # Back, it takes writes again, with no restart of the app.
    for _ in range(50):
        if client.post("/messages", json={"text": "two"}).status_code == 201:
            break
    else:
        pytest.fail("the primary did not take writes again")


# Proof 7: migrations run on the primary and reach the standby.


def test_migrations_run_on_the_primary_and_reach_the_standby(app, replication):
    standby = app.extensions["engines"]["standby"]
    with standby.connect() as connection:
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
        assert version.scalar() == "0002"
        columns = connection.exec_driver_sql(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'messages' ORDER BY ordinal_position"
        )
        assert columns.scalars().all() == ["id", "text", "created_at"]


# Proof 6: a long read on the standby, and the primary's vacuum.


@pytest.fixture(params=["off", "on"], ids=["without-feedback", "with-feedback"])
def pair_with_feedback(request):
    """Return a pair whose standby cancels a read in the way of replay
    after 100 ms, and tells the primary what it reads or not."""
    bindir = find_binaries()
    if bindir is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    pair = Replication(
        bindir,
        standby_settings={
            "max_standby_streaming_delay": "100ms",
            "hot_standby_feedback": request.param,
        },
    )
    yield request.param == "on", pair
    pair.destroy()


def test_a_long_read_on_the_standby_is_cancelled_by_vacuum_unless_it_feeds_back(
    pair_with_feedback,
):
    feedback, pair = pair_with_feedback
    url = pair.create_database()
    primary = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    standby = create_engine(pair.standby.url_of(url), poolclass=NullPool)
    with primary.connect() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE notes AS SELECT n AS id FROM generate_series(1, 1000) AS n"
        )
    pair.standby.wait_for_replay()

    outcome = []

    def long_read():
        try:
            with standby.connect() as connection:
                outcome.append(
                    connection.execute(
                        text("SELECT count(*) FROM notes, pg_sleep(2)")
                    ).scalar()
                )
        except DBAPIError as error:
            outcome.append(error)

    reader = threading.Thread(target=long_read)
    reader.start()
    time.sleep(0.5)
    # The primary deletes the rows and vacuums them away: the standby must
    # replay their removal, which the read, still running, may still need.
    with primary.connect() as connection:
        connection.exec_driver_sql("DELETE FROM notes")
        connection.exec_driver_sql("VACUUM notes")
        dead = connection.execute(
            text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'notes'")
        ).scalar()
    reader.join()
    primary.dispose()

    if feedback:
        # The read ends with what it saw; the primary kept the dead rows it
        # might need: a vacuum that removes nothing, and a table that grows.
        assert outcome == [1000]
        assert dead == 1000
    else:
        [error] = outcome
        assert "canceling statement due to conflict with recovery" in str(error)
        assert error.orig.sqlstate == "40001"
        assert dead == 0


# Proof 5: failover.


def multi_host(url, *clusters):
    """Return a database's URL that tries each cluster in turn, and takes
    the first that accepts writes."""
    database = make_url(url).database
    hosts = "&".join(f"host=127.0.0.1:{cluster.port}" for cluster in clusters)
    return (
        f"postgresql+psycopg://postgres@/{database}?{hosts}"
        "&target_session_attrs=read-write"
    )


def answer_of(response):
    """Return a response's status, and its JSON error if it has one."""
    return response.status_code, (response.json or {}).get("error")


def test_after_failover_the_app_writes_to_the_promoted_standby_by_itself():
    bindir = find_binaries()
    if bindir is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    pair = Replication(bindir)
    try:
        messages, audit = pair.create_database(), pair.create_database()
        app = create_app(
            {
                "TESTING": True,
                "DATABASE_URL": multi_host(messages, pair.primary, pair.standby),
                "AUDIT_DATABASE_URL": multi_host(audit, pair.primary, pair.standby),
                "REPLICA_DATABASE_URLS": [pair.standby.url_of(messages)],
            }
        )
        result = app.test_cli_runner().invoke(args=["init-db"])
        assert result.output.endswith("Initialized the database.\n"), result.output
        client = app.test_client()
        assert client.post("/messages", json={"text": "before"}).status_code == 201
        pair.standby.wait_for_replay()

        # The primary's host is lost; the standby is promoted after it.
        pair.primary.stop(mode="immediate")
        during = [answer_of(client.post("/messages", json={"text": "during"}))]
        pair.standby.promote()
        while during[-1][0] != 201 and len(during) < 50:
            during.append(answer_of(client.post("/messages", json={"text": "during"})))
        after = [
            answer_of(client.post("/messages", json={"text": "after"}))[0]
            for _ in range(20)
        ]
        listed = client.get("/messages").json
        close_app(app)
    finally:
        pair.destroy()

    # While no server took writes, JSON 503s; from the first write the
    # promoted standby took on, every write answers 201: pre-ping dropped
    # the pool's dead connections, and the URL's second host took over.
    assert {status for status, _ in during[:-1]} == {503}, during
    assert during[-1][0] == 201, during
    assert after == [201] * 20
    assert [message["text"] for message in listed].count("after") == 20


# The page says where its reads went.


def test_the_page_says_where_its_reads_went_and_why(app, replication):
    writer = app.test_client()
    assert "reads went to the <strong>standby</strong>: no write of yours." in (
        writer.get("/").text
    )
    replication.standby.pause_replay()
    assert writer.post("/messages", json={"text": "lagging"}).status_code == 201
    assert (
        "reads went to the <strong>primary</strong>:"
        " standby has not replayed your last write yet."
    ) in writer.get("/").text


def test_pool_shows_each_servers_pool_and_where_the_last_reads_went(app, replication):
    client = app.test_client()
    client.get("/messages")
    status = client.get("/pool").json
    # The primary's pool at the top level, as in every step; the standby's
    # under its name, with the same keys.
    [standby_url] = app.config["REPLICA_DATABASE_URLS"]
    for where, url in (
        (status, app.config["DATABASE_URL"]),
        (status["standby"], standby_url),
    ):
        assert where["url"] == make_url(url).render_as_string(hide_password=True)
    assert status["standby"].keys() >= {"checked_in", "checked_out", "connects"}
    assert status["standby"]["connects_in_this_process"] >= 1
    assert status["reads"] == {"server": "standby", "why": "no write of yours"}


# Proof 4 under load: gunicorn's workers, clients that read and write.

CLIENTS = 4
UNDER_LOAD_SECONDS = 8


def read_or_write(url, writes, stop):
    """Send requests until ``stop``: writes, or reads of the page; return
    each as (sent, status, server of the page's reads or None).

    A writer's reads would go to the primary for as long as the standby has
    not replayed its last write, which a writer that writes every few
    requests keeps it from: readers only read, with no write of theirs.
    Each answer is (sent, answered, status, server of the page's reads)."""
    answers = []
    with requests.Session() as http:
        for count in range(2000):
            if stop.is_set():
                break
            sent = time.monotonic()
            try:
                if writes:
                    response = http.post(
                        url + "/messages", json={"text": f"n{count}"}, timeout=10
                    )
                else:
                    response = http.get(url + "/", timeout=10)
            except requests.RequestException:
                answers.append((sent, time.monotonic(), None, None))
                continue
            server = re.search(
                r"reads went to the <strong>(\w+)</strong>", response.text
            )
            answered = time.monotonic()
            answers.append((sent, answered, response.status_code, server and server[1]))
    return answers


def test_under_load_a_standby_that_stops_costs_no_request(
    databases, replication, tmp_path
):
    standby_url = replication.standby.url_of(databases["DATABASE_URL"])
    env = {
        **databases,
        "FLASK_REPLICA_DATABASE_URLS": json.dumps([standby_url]),
        "FLASK_REPLICA_RETRY_SECONDS": "1",
    }
    initializer = create_app({"TESTING": True, **databases})
    initializer.test_cli_runner().invoke(args=["init-db"])
    close_app(initializer)
    replication.standby.wait_for_replay()
    stop = threading.Event()
    with Gunicorn(
        "step12_replicas.wsgi:app",
        ["--workers", "2", "--threads", "4", "--log-level", "warning"],
        env,
        tmp_path / "gunicorn.log",
    ) as gunicorn:
        results = []
        loader = threading.Thread(
            target=lambda: results.extend(
                in_threads(
                    # Half the clients write, half read.
                    lambda number, stop: read_or_write(
                        gunicorn.url, number % 2 == 0, stop
                    ),
                    CLIENTS,
                    stop,
                    seconds=UNDER_LOAD_SECONDS,
                )
            )
        )
        loader.start()
        try:
            time.sleep(1.5)
            stopping_at = time.monotonic()
            replication.standby.stop()
            stopped_at = time.monotonic()
            time.sleep(2)
            starting_at = time.monotonic()
            replication.standby.start()
            started_at = time.monotonic()
        finally:
            loader.join()
        log = gunicorn.log()
    answers = [answer for each in results for answer in each]

    # Not one request failed: reads went to the primary while the standby
    # was down, and back to it once it answered again.
    assert {status for _, _, status, _ in answers} <= {200, 201}, log[-3000:]
    reads = [
        (sent, answered, server) for sent, answered, _, server in answers if server
    ]
    # Answered before the standby began to stop: there; sent while it was
    # down: on the primary; some time after it started again: there.
    before = {server for _, answered, server in reads if answered < stopping_at}
    down = {server for sent, _, server in reads if stopped_at < sent < starting_at}
    back = {server for sent, _, server in reads if sent > started_at + 2}
    assert before == {"standby"}
    assert down == {"primary"}
    assert "standby" in back
    logger.info(
        "standby stopped under load: %d requests, %d reads on the primary"
        " while it was down, 0 failed",
        len(answers),
        sum(1 for sent, _, _ in reads if stopped_at < sent < starting_at),
    )
