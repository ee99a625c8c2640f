"""Drills on a real MariaDB: "MySQL server has gone away", and what differs.

MySQL and MariaDB close a connection that has been idle longer than
``wait_timeout``: the most reported pain on Flask-SQLAlchemy's tracker.
Each drill shows the fault with step 4's defaults and with the setting
that answers it taken away (or on step 3, which has none). Killed
connections and a restart are drilled beside PostgreSQL's, in
tests/test_faults_postgres.py. The shared contract runs on MariaDB too
(tests/test_contract.py), and so do step 5's reflection, step 6's two
databases and step 7's isolation, in their own modules.
"""

import ssl

import pymysql
import pytest
from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.pool import NullPool

from step01_engine.models import messages
from testbed import mariadb as mariadb_servers
from testbed.loopback import free_port
from testbed.step_apps import close_app

from .conftest import create_app_with_tables
from .conftest import skip_or_fail
from .drills import backend_pids
from .drills import statuses_of
from .drills import wait_until_gone
from .stale_reads import read_again_after_a_change_elsewhere
from .steps import STEPS
from .steps import pool_status
from .steps import served
from .steps import steps_from

PRE_PING_OFF = {"pool_pre_ping": False}
NEITHER = {"pool_pre_ping": False, "pool_recycle": -1}
# What PyMySQL says of a connection the server closed: 2006 when the server
# closed it idle (wait_timeout), 2013 when it was killed under a query.
GONE = ('(2006, "MySQL server has gone away', "(2013, 'Lost connection to MySQL")
# The server's idle timeout in the gone-away drill, in seconds: its least.
WAIT_TIMEOUT = 1
LATEST_STEP = STEPS[-1]


@pytest.fixture
def backend():
    """Run every drill on MariaDB."""
    return "mariadb"


@pytest.fixture(scope="module")
def impatient_server():
    """Return a MariaDB of its own whose wait_timeout is one second."""
    binaries = mariadb_servers.find_binaries()
    if binaries is None:
        skip_or_fail(mariadb_servers.HOW_TO_GET_MARIADB)
    instance = mariadb_servers.Instance(
        binaries, free_port(), settings={"wait-timeout": WAIT_TIMEOUT}
    )
    yield instance
    instance.destroy()


# 1. Gone away: the server's wait_timeout


@pytest.mark.parametrize(
    ("step", "engine_options", "first_status"),
    [
        # Step 4's defaults: pre-ping finds the dropped connection.
        ("step04_pooling", {}, 200),
        # pool_recycle below wait_timeout alone: replaced before it dies.
        ("step04_pooling", {**PRE_PING_OFF, "pool_recycle": WAIT_TIMEOUT / 2}, 200),
        # Neither, and step 3, which has none: the request meets it.
        ("step04_pooling", NEITHER, 503),
        ("step03_teardown", {}, 503),
    ],
    ids=["defaults", "recycle-below-wait-timeout", "neither", "step03"],
)
def test_an_idle_connection_the_server_dropped_needs_pre_ping_or_recycle(
    step, engine_options, first_status, impatient_server, tmp_path
):
    database_url = impatient_server.create_database()
    app = create_app_with_tables(step, {"DATABASE_URL": database_url}, engine_options)
    client = app.test_client()
    try:
        assert client.get("/messages").status_code == 200
        idle = backend_pids(impatient_server, database_url)
        assert len(idle) == 1

        # The app stays idle longer than wait_timeout: the server closes
        # the pooled connection, and nothing tells the pool.
        wait_until_gone(impatient_server, database_url, idle)

        (status, error), after = statuses_of(client, 2)
        assert status == first_status
        if status == 503:
            assert error.startswith("database unavailable (OperationalError)")
            assert any(words in error for words in GONE), error
        # SQLAlchemy saw a disconnect and replaced the pool: the next succeeds.
        assert after == (200, None)
    finally:
        close_app(app)
        impatient_server.drop_database(database_url)


# 2. Killed connections and a restart: tests/test_faults_postgres.py, on
# both servers.


# 3. REPEATABLE READ, MariaDB's default


def test_the_default_isolation_level_is_repeatable_read(make_app):
    engine = make_app("step04_pooling").extensions["engine"]
    with engine.connect() as connection:
        # MariaDB 10.11 names it tx_isolation (MySQL 8: transaction_isolation).
        level = connection.exec_driver_sql("SELECT @@tx_isolation").scalar_one()
    assert level == "REPEATABLE-READ"


@pytest.mark.parametrize(
    ("step", "seen"),
    [("step02_session", "original"), ("step03_teardown", "changed")],
)
def test_a_reused_thread_reads_stale_rows_until_teardown_ends_its_transaction(
    step, seen, make_app
):
    # No isolation level set: on MariaDB, step 2's Session left open keeps
    # its first read's snapshot, as tests/test_step02_session.py shows on
    # the other databases once they are made to read from snapshots.
    client = make_app(step).test_client()
    assert read_again_after_a_change_elsewhere(client) == seen


# 4. Text: utf8mb4, and what a 3-byte utf8 column does

EMOJI = "😀"


def narrow_the_text_column(app):
    """Make ``messages.text`` MariaDB's 3-byte utf8 (utf8mb3), as an older
    schema has it."""
    with app.extensions["engine"].begin() as connection:
        connection.exec_driver_sql(
            "ALTER TABLE messages MODIFY text VARCHAR(500)"
            " CHARACTER SET utf8mb3 NOT NULL"
        )


@pytest.mark.parametrize("step", ["step01_engine", "step04_pooling", LATEST_STEP])
def test_a_utf8mb3_column_refuses_an_emoji_with_a_clear_422(step, make_app):
    app = make_app(step)
    narrow_the_text_column(app)
    client = app.test_client()

    response = client.post("/messages", json={"text": f"hello {EMOJI}"})

    # Strict mode, MariaDB's default, refuses the value; nothing is written,
    # and trying again would fail again: a client error, not 503.
    assert response.status_code == 422
    assert response.get_json()["error"].startswith(
        'the database cannot store this text: (1366, "Incorrect string value'
    )
    assert client.get("/messages").get_json() == []
    assert pool_status(client)["checked_out"] == 0
    # Three bytes a character are fine.
    assert client.post("/messages", json={"text": "é"}).status_code == 201


def test_without_strict_mode_a_utf8mb3_column_stores_question_marks(make_app):
    # The failing variant of strict mode: the server stores what it can,
    # warns, and the request succeeds with the text changed.
    app = make_app(
        "step04_pooling",
        engine_options={"connect_args": {"init_command": "SET sql_mode = ''"}},
    )
    narrow_the_text_column(app)
    client = app.test_client()

    created = client.post("/messages", json={"text": f"hello {EMOJI}"})

    assert created.status_code == 201
    assert created.get_json()["text"] == "hello ?"
    assert client.get("/messages").get_json()[0]["text"] == "hello ?"


@pytest.mark.parametrize(
    ("step", "status"),
    # From step 5 on, the schema file says utf8mb4 for the table and its
    # column; step 4's create_all takes the database's character set.
    [("step04_pooling", 422), ("step05_reflection", 201), (LATEST_STEP, 201)],
)
def test_in_a_latin1_database_the_schema_files_still_store_an_emoji(
    step, status, database_url, make_app
):
    name = make_url(database_url).database
    engine = create_engine(database_url, poolclass=NullPool)
    with engine.connect() as connection:
        connection.exec_driver_sql(f"ALTER DATABASE `{name}` CHARACTER SET latin1")
    engine.dispose()
    client = make_app(step).test_client()

    response = client.post("/messages", json={"text": EMOJI})

    assert response.status_code == status, response.get_json()


def test_the_harness_databases_and_schema_files_are_utf8mb4(make_app):
    app = make_app(LATEST_STEP)
    engine = app.extensions["engine"]
    with engine.connect() as connection:
        charsets = connection.execute(
            text(
                "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.schemata"
                " WHERE schema_name = DATABASE()"
                " UNION ALL SELECT CHARACTER_SET_NAME FROM information_schema.columns"
                " WHERE table_schema = DATABASE() AND column_name = 'text'"
            )
        ).scalars()
        assert set(charsets) == {"utf8mb4"}


# 5. What the steps' own settings keep from MariaDB's


@pytest.mark.parametrize("step", served(steps_from("step04_pooling")))
def test_pool_recycle_is_well_below_the_default_wait_timeout(step, make_app):
    app = make_app(step)
    with app.extensions["engine"].connect() as connection:
        wait_timeout = connection.exec_driver_sql("SELECT @@wait_timeout").scalar()
    # Eight hours by default; hosted servers set minutes, which is what
    # pre-ping is for.
    assert wait_timeout == 8 * 3600
    assert pool_status(app.test_client())["options"]["pool_recycle"] < wait_timeout


def test_a_mariadb_url_without_charset_still_speaks_utf8mb4(database_url):
    # PyMySQL asks for utf8mb4 unless told otherwise; the harness's URLs
    # say so all the same, and so should yours.
    bare = make_url(database_url).difference_update_query(["charset"])
    engine = create_engine(bare, poolclass=NullPool)
    with engine.connect() as connection:
        charset = connection.exec_driver_sql("SELECT @@character_set_client")
        assert charset.scalar() == "utf8mb4"
    engine.dispose()


def test_pymysql_builds_a_tls_context_for_each_connection_unless_told_not_to(
    database_url,
):
    # Why a new connection costs MariaDB's column so much in the benchmark:
    # PyMySQL 1.2 prefers TLS, and makes an SSLContext (loading the
    # system's certificates) before it learns that this server has none.
    url = make_url(database_url)
    where = {"host": url.host, "port": url.port, "user": url.username}
    preferred = pymysql.connect(**where)
    disabled = pymysql.connect(**where, ssl_disabled=True)
    try:
        assert isinstance(preferred.ctx, ssl.SSLContext)
        assert not hasattr(disabled, "ctx")
        # Both talk in the clear all the same: the server offers no TLS.
        for connection in (preferred, disabled):
            assert not isinstance(connection._sock, ssl.SSLSocket)
    finally:
        preferred.close()
        disabled.close()


# 5. MySQL's spelling, and MySQL itself
#
# Most users write mysql+pymysql://, which reaches MariaDB as well: the
# shared contract runs on every step through such a URL (the "mysql-url"
# backend of tests/test_contract.py). MySQL 8 itself cannot run here (Debian
# ships no MySQL server): what SQLAlchemy would do with one is shown on its
# dialect, without a server.


@pytest.mark.parametrize("backend", ["mysql-url"])
@pytest.mark.parametrize("step", served(steps_from("step05_reflection")))
def test_a_mysql_url_reaches_mariadb_through_the_mysql_dialect(step, make_app):
    # make_app runs init-db: its schema file is chosen by the dialect's name.
    app = make_app(step)
    client = app.test_client()

    engine = app.extensions["engine"]
    assert engine.url.drivername == "mysql+pymysql"
    assert (engine.dialect.name, engine.dialect.is_mariadb) == ("mysql", True)
    created = client.post("/messages", json={"text": "🦭 mysql+pymysql"})
    assert created.status_code == 201
    assert client.get("/messages").get_json() == [created.get_json()]


def dialect_as_set_for(url, is_mariadb, server_version):
    """Return SQLAlchemy's dialect for ``url`` as its first connection to
    such a server sets it up, without a server: MySQL 8 cannot run here."""
    dialect = create_engine(url).dialect
    dialect._set_mariadb(is_mariadb, server_version)
    return dialect


MYSQL_8 = ("mysql+pymysql://", False, (8, 0, 36))
MARIADB_10 = ("mysql+pymysql://", True, (10, 11, 6))


def test_on_mysql_the_orm_reads_new_ids_from_the_cursor_not_returning():
    mysql = dialect_as_set_for(*MYSQL_8)
    mariadb = dialect_as_set_for(*MARIADB_10)
    insert_returning = messages.insert().values(text="x").returning(messages)
    delete_returning = messages.delete().returning(messages.c.id)

    # What the ORM (steps 2 on) and SQLAlchemy's own inserts use RETURNING
    # for: MariaDB's INSERT (10.5 on) and DELETE (10.0.5 on), not MySQL's,
    # whose new ids come from the cursor (lastrowid).
    assert (mariadb.insert_returning, mariadb.delete_returning) == (True, True)
    assert (mysql.insert_returning, mysql.delete_returning) == (False, False)
    # Step 1 asks for RETURNING itself: SQLAlchemy sends it whatever the
    # server, and MySQL's parser, which has no RETURNING, refuses it.
    for statement in (insert_returning, delete_returning):
        assert "RETURNING" in str(statement.compile(dialect=mysql))


def test_a_mariadb_url_refuses_a_mysql_server():
    with pytest.raises(InvalidRequestError, match="8.0.36 is not a MariaDB variant"):
        dialect_as_set_for("mariadb+pymysql://", False, (8, 0, 36))


def test_mysql_8s_inactivity_error_counts_as_a_lost_connection():
    # From MySQL 8.0.24 the server says why it closed an idle connection:
    # 4031 ER_CLIENT_INTERACTION_TIMEOUT, where MariaDB's client sees 2006.
    dialect = dialect_as_set_for(*MYSQL_8)
    timed_out = pymysql.err.OperationalError(
        4031, "The client was disconnected by the server because of inactivity."
    )
    gone = pymysql.err.OperationalError(2006, "MySQL server has gone away")

    assert dialect.is_disconnect(timed_out, None, None)
    assert dialect.is_disconnect(gone, None, None)
