"""Step 7: each test in a transaction that rolls back, in every database.

SQLAlchemy's documentation, "Joining a Session into an External Transaction
(such as for test suites)" and, for SQLite, "Serializable isolation /
Savepoints / Transactional DDL" in its pysqlite notes. The failing variant
of each concept is the same test without isolation.
"""

import contextlib
import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from testbed import ROOT
from testbed.step_apps import close_app
from testbed.step_apps import dispose_engines
from testbed.threads import run_in_new_thread

from .conftest import ALL_BACKENDS
from .conftest import create_app_with_tables
from .steps import import_step
from .steps import message_class
from .steps import pool_status
from .steps import steps_from

STEPS_WITH_ISOLATION = steps_from("step07_testing")


@pytest.fixture(params=STEPS_WITH_ISOLATION)
def step(request):
    """Name each step that ships test isolation."""
    return request.param


@pytest.fixture
def isolated(step):
    """Return the step's isolated() context manager."""
    return import_step(f"{step}.testing").isolated


def committed(app):
    """Return what each database holds, read through a connection of its own."""
    queries = {
        "DATABASE_URL": "SELECT text FROM messages ORDER BY id",
        "AUDIT_DATABASE_URL": "SELECT action FROM audit_log ORDER BY id",
    }
    held = {}
    for key, query in queries.items():
        engine = create_engine(app.config[key], poolclass=NullPool)
        with engine.connect() as connection:
            held[key] = [row[0] for row in connection.execute(text(query))]
        engine.dispose()
    return {"messages": held["DATABASE_URL"], "audit": held["AUDIT_DATABASE_URL"]}


NOTHING = {"messages": [], "audit": []}


def write_through_the_api(client):
    """Create, edit and delete through the API, each write committed."""
    first = client.post("/messages", json={"text": "first"}).get_json()
    client.post("/messages", json={"text": "second"})
    edited = client.patch(f"/messages/{first['id']}", json={"text": "edited"})
    assert edited.status_code == 200
    assert client.delete(f"/messages/{first['id']}").status_code == 204


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("isolate", [True, False])
def test_writes_through_the_api_are_rolled_back_in_both_databases(
    step, make_app, isolated, isolate
):
    app = make_app(step)
    client = app.test_client()

    with isolated(app) if isolate else contextlib.nullcontext():
        write_through_the_api(client)
        # Inside, the app sees its own writes, as any test expects.
        assert [m["text"] for m in client.get("/messages").get_json()] == ["second"]
        assert len(client.get("/audit").get_json()) == 4

    if isolate:
        assert committed(app) == NOTHING
    else:
        # The failing variant: without isolation, every write stays.
        assert committed(app) == {
            "messages": ["second"],
            "audit": ["create", "create", "update", "delete"],
        }


def test_a_row_committed_before_the_block_is_there_after_it_even_if_deleted(
    step, make_app, isolated
):
    app = make_app(step)
    client = app.test_client()
    kept = client.post("/messages", json={"text": "kept"}).get_json()

    with isolated(app):
        assert client.delete(f"/messages/{kept['id']}").status_code == 204
        assert client.get("/messages").get_json() == []

    assert client.get("/messages").get_json() == [kept]
    assert committed(app) == {"messages": ["kept"], "audit": ["create"]}


def refuse_the_next(engine, statement_start):
    """Make the database refuse the next statement that starts so.

    The statement is swapped for one naming a table that does not exist: a
    real error from the database, which the app answers with a 503.
    """
    refused = []

    def swap(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith(statement_start) and not refused:
            refused.append(statement)
            return "SELECT * FROM no_such_table", ()
        return statement, parameters

    event.listen(engine, "before_cursor_execute", swap, retval=True)
    return refused


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_request_that_fails_keeps_the_tests_earlier_writes(step, make_app, isolated):
    app = make_app(step)
    client = app.test_client()

    with isolated(app):
        client.post("/messages", json={"text": "earlier"})
        refused = refuse_the_next(app.extensions["audit_engine"], "INSERT")

        failed = client.post("/messages", json={"text": "refused"})

        assert refused
        assert failed.status_code == 503
        # Teardown rolled back to the request's savepoint, not further.
        assert [m["text"] for m in client.get("/messages").get_json()] == ["earlier"]
        assert client.post("/messages", json={"text": "later"}).status_code == 201
        assert [m["text"] for m in client.get("/messages").get_json()] == [
            "earlier",
            "later",
        ]

    assert committed(app) == NOTHING


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_without_savepoints_a_failed_request_takes_earlier_writes_with_it(
    step, make_app, isolated
):
    app = make_app(step)
    client = app.test_client()

    def fail_a_request_without_savepoints():
        with isolated(app):
            # The failing variant: the Session joins the held transaction
            # without a savepoint, and its rollback is the whole test's.
            app.extensions["session"].session_factory.configure(
                join_transaction_mode="rollback_only"
            )
            client.post("/messages", json={"text": "earlier"})
            refuse_the_next(app.extensions["audit_engine"], "INSERT")
            response = client.post("/messages", json={"text": "refused"})
            assert response.status_code == 503
            # The failure rolled back the held transaction, the earlier
            # write too.
            assert client.get("/messages").get_json() == []

    # The block notices that its transaction ended under it, and says so.
    with pytest.raises(error_of(step), match="ended the held transaction"):
        fail_a_request_without_savepoints()

    assert committed(app) == NOTHING


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_ids_taken_inside_are_free_again_on_sqlite_only(
    step, make_app, isolated, backend
):
    app = make_app(step)
    client = app.test_client()
    ids = []

    for _ in range(2):
        with isolated(app):
            ids.append(client.post("/messages", json={"text": "x"}).get_json()["id"])

    # SQLite picks the next rowid from the table; PostgreSQL's identity is
    # a sequence, and a sequence never rolls back; nor does InnoDB's
    # AUTO_INCREMENT counter.
    if backend == "sqlite":
        assert ids[1] == ids[0]
    else:
        assert ids[1] > ids[0]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_integrity_error_and_rollback_in_app_code_keep_earlier_writes(
    step, make_app, isolated
):
    app = make_app(step)
    client = app.test_client()

    with isolated(app):
        created = client.post("/messages", json={"text": "earlier"}).get_json()
        with app.app_context():
            session = app.extensions["session"]()
            Message = app.extensions["models"].get().Message
            session.add(Message(id=created["id"], text="the same id"))
            with pytest.raises(IntegrityError):
                session.commit()
            session.rollback()
            assert session.get(Message, created["id"]).text == "earlier"

        assert client.get("/messages").get_json() == [created]

    assert committed(app) == NOTHING


def test_the_pools_are_as_they_were_before(step, make_app, isolated):
    app = make_app(step)
    client = app.test_client()
    client.get("/messages")
    before = pool_status(client)

    with isolated(app):
        during = pool_status(client)
        write_through_the_api(client)

    after = pool_status(client)
    # One connection of each pool is held for the block...
    assert during["checked_out"] == during["audit"]["checked_out"] == 1
    # ...and given back: the same connections, none opened, none lost.
    for key in ("checked_in", "checked_out", "connects"):
        assert after[key] == before[key], key
        assert after["audit"][key] == before["audit"][key], key


def test_it_needs_no_app_context_and_works_inside_one(step, make_app, isolated):
    app = make_app(step)

    with isolated(app):
        app.test_client().post("/messages", json={"text": "no context"})
    with app.app_context(), isolated(app):
        created = app.test_client().post("/messages", json={"text": "inside one"})
        session = app.extensions["session"]()
        Message = app.extensions["models"].get().Message
        assert session.get(Message, created.get_json()["id"]).text == "inside one"

    assert committed(app) == NOTHING


def test_another_thread_is_refused_with_a_clear_error(step, make_app, isolated):
    app = make_app(step)
    client = app.test_client()
    error = import_step(f"{step}.testing").IsolationError

    with isolated(app):
        client.post("/messages", json={"text": "from the test's thread"})

        def from_another_thread():
            with pytest.raises(error, match="holds one connection per database"):
                client.get("/messages")
            return True

        assert run_in_new_thread(from_another_thread)
        # The test's own thread goes on as before.
        assert len(client.get("/messages").get_json()) == 1

    assert committed(app) == NOTHING


def test_blocks_on_two_apps_nest_and_each_app_keeps_serving_the_test(
    step, make_app, new_database, isolated
):
    outer_app = make_app(step)
    inner_app = create_app_with_tables(
        step,
        {
            "DATABASE_URL": new_database("inner"),
            "AUDIT_DATABASE_URL": new_database("inner_audit"),
        },
    )
    outer, inner = outer_app.test_client(), inner_app.test_client()
    try:
        with isolated(outer_app):
            assert outer.post("/messages", json={"text": "before"}).status_code == 201
            with isolated(inner_app):
                assert inner.post("/messages", json={"text": "in"}).status_code == 201
                # The test's thread is in both blocks: it may use both apps.
                assert (
                    outer.post("/messages", json={"text": "during"}).status_code == 201
                )
            # The inner block is over: the outer one goes on as before.
            assert outer.post("/messages", json={"text": "after"}).status_code == 201
            assert len(outer.get("/messages").get_json()) == 3

        assert committed(outer_app) == committed(inner_app) == NOTHING
    finally:
        close_app(inner_app)


def test_once_the_block_is_over_other_threads_write_and_read_as_before(
    step, make_app, isolated
):
    app = make_app(step)
    registry = app.extensions["session"]
    configured = dict(registry.session_factory.kw)
    client = app.test_client()
    client.post("/messages", json={"text": "before"})

    with isolated(app):
        client.post("/messages", json={"text": "rolled back"})

    def write_and_read():
        created = client.post("/messages", json={"text": "after"})
        return created.status_code, client.get("/messages").get_json()

    # Not refused as inside the block: the thread commits, and reads what
    # is committed.
    status, messages = run_in_new_thread(write_and_read)
    assert status == 201
    assert [message["text"] for message in messages] == ["before", "after"]
    assert committed(app) == {
        "messages": ["before", "after"],
        "audit": ["create", "create"],
    }
    # The registry makes its Sessions as before: on the engines, without
    # savepoints.
    assert registry.session_factory.kw == configured


def texts_through(session):
    """Return the texts of the messages a Session sees."""
    return list(session.scalars(text("SELECT text FROM messages ORDER BY id")))


def test_a_session_made_before_the_block_carries_none_of_its_writes_past_it(
    step, make_app, isolated
):
    app = make_app(step)
    registry = app.extensions["session"]
    Message = message_class(app)

    with app.app_context():
        # The app context's Session, made before the block and in a
        # transaction on a connection of the engine's: the block must not
        # write through it.
        made_before = registry()
        assert texts_through(made_before) == []

        with isolated(app):
            app.test_client().post("/messages", json={"text": "through the API"})
            inside = registry()
            inside.add(Message(text="through the context's Session"))
            inside.commit()
            assert texts_through(inside) == [
                "through the API",
                "through the context's Session",
            ]

        # The registry starts afresh, and nothing the block wrote is there,
        # through the Session from before the block or a new one.
        after = registry()
        assert after is not inside
        assert texts_through(after) == []
        assert texts_through(made_before) == []
        registry.remove()
        made_before.close()
    assert committed(app) == NOTHING


# pysqlite's own transaction handling is SQLite's alone.
@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_sqlite_the_app_behaves_as_before_once_the_block_is_over(
    step, make_app, isolated
):
    app = make_app(step)
    engine = app.extensions["engine"]
    with engine.connect() as connection:
        isolation_level = connection.connection.driver_connection.isolation_level

    with isolated(app):
        app.test_client().post("/messages", json={"text": "rolled back"})
    app.test_client().post("/messages", json={"text": "committed"})

    # The pool's one connection is back as pysqlite had it.
    with engine.connect() as connection:
        assert connection.connection.driver_connection.isolation_level == (
            isolation_level
        )
    assert committed(app)["messages"] == ["committed"]


@pytest.mark.slow
def test_the_example_tests_pass_and_leave_the_databases_empty(step, databases_for):
    databases = databases_for(step)
    env = {
        **os.environ,
        "TEST_DATABASE_URL": databases["DATABASE_URL"],
        "TEST_AUDIT_DATABASE_URL": databases["AUDIT_DATABASE_URL"],
    }

    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider"),
            f"{step}/example_tests",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout
    app = import_step(step).create_app(databases)
    assert committed(app) == NOTHING
    dispose_engines(app)


def test_ddl_inside_the_block_is_rolled_back_too_on_sqlite_and_postgresql(
    step, make_app, isolated
):
    app = make_app(step)

    with isolated(app), app.app_context():
        # Both databases have transactional DDL.
        session = app.extensions["session"]()
        session.execute(text("CREATE TABLE scratch (id INTEGER)"))
        session.commit()

    assert not has_table(app, "scratch")


@pytest.mark.parametrize("backend", ["mariadb"])
def test_on_mariadb_ddl_inside_the_block_commits_and_the_block_says_so(
    step, make_app, isolated
):
    app = make_app(step)
    client = app.test_client()

    def write_then_create_a_table():
        with isolated(app):
            client.post("/messages", json={"text": "before the DDL"})
            with app.app_context():
                session = app.extensions["session"]()
                # MariaDB commits the transaction before a CREATE TABLE
                # runs, and the app's savepoint goes with it.
                session.execute(text("CREATE TABLE scratch (id INTEGER)"))
                with pytest.raises(OperationalError, match="SAVEPOINT"):
                    session.commit()

    with pytest.raises(error_of(step), match="ended the held transaction on mariadb"):
        write_then_create_a_table()

    # The write before the DDL was committed with it, and the table stays.
    assert committed(app)["messages"] == ["before the DDL"]
    assert has_table(app, "scratch")


@pytest.mark.parametrize("backend", ["mariadb"])
def test_on_mariadb_the_recipe_alone_lets_ddl_commit_in_silence(step, make_app):
    # The failing variant: SQLAlchemy's recipe without isolated()'s check.
    app = make_app(step)
    Message = message_class(app)

    with app.extensions["engine"].connect() as connection:
        outer = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        session.add(Message(text="meant to roll back"))
        session.commit()
        session.close()
        # A fixture's or a migration's DDL, on the test's connection.
        connection.exec_driver_sql("CREATE TABLE scratch (id INTEGER)")
        outer.rollback()

    assert committed(app)["messages"] == ["meant to roll back"]


def has_table(app, name):
    """Say whether the app's messages database has this table now."""
    engine = create_engine(app.config["DATABASE_URL"], poolclass=NullPool)
    with engine.connect() as connection:
        found = connection.dialect.has_table(connection, name)
    engine.dispose()
    return found


def error_of(step):
    """Return the step's IsolationError."""
    return import_step(f"{step}.testing").IsolationError


def test_code_that_opens_its_own_connection_sees_none_of_the_tests_writes(
    step, make_app, isolated
):
    app = make_app(step)
    client = app.test_client()

    with isolated(app):
        client.post("/messages", json={"text": "uncommitted"})
        # The app's own engine lends another connection, outside the held
        # transaction: whatever uses it works beside the test, not in it.
        with app.extensions["engine"].connect() as connection:
            seen = connection.execute(text("SELECT count(*) FROM messages"))
            assert seen.scalar_one() == 0
        assert committed(app) == NOTHING
        assert len(client.get("/messages").get_json()) == 1


# Python's own sqlite3 transaction handling is SQLite's alone.
@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_sqlite_without_the_begin_handling_a_savepoint_commits_for_real(
    make_app,
):
    # The failing variant of isolated()'s SQLite care: the recipe as it is
    # on other databases. Python's sqlite3 sends no BEGIN for SAVEPOINT,
    # so the savepoint starts the transaction and its RELEASE commits it.
    app = make_app("step07_testing")
    engine = app.extensions["engine"]
    Message = app.extensions["models"].get().Message

    with engine.connect() as connection:
        outer = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        session.add(Message(text="meant to roll back"))
        session.commit()
        session.close()
        outer.rollback()

    assert committed(app)["messages"] == ["meant to roll back"]
