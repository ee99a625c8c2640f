"""Step 6: two databases, each with its engine and pool, behind one Session.

SQLAlchemy's documentation, "Partitioning Strategies" (``binds``,
``get_bind()``) and "Enabling Two-Phase Commit". The failing variant of each
concept runs on step 5, which has one database.
"""

import os

import pytest
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import inspect
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from testbed.fork import in_forked_child
from testbed.step_apps import dispose_engines

from .conftest import ALL_BACKENDS
from .faults import lose_connection_before
from .instance_folder import keep_out_of_the_instance_folder
from .steps import STEPS_WITH_MIGRATIONS
from .steps import import_step
from .steps import pool_status
from .steps import steps_from

STEPS_WITH_TWO_DATABASES = steps_from("step06_multiple_databases")


@pytest.fixture(params=STEPS_WITH_TWO_DATABASES)
def step(request):
    """Name each step with a second database."""
    return request.param


def rows(url, query):
    """Run a query on a database through a connection of its own."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        result = connection.execute(text(query)).all()
    engine.dispose()
    return result


def tables(url):
    """Name the tables a database has."""
    engine = create_engine(url, poolclass=NullPool)
    names = inspect(engine).get_table_names()
    engine.dispose()
    return names


def stored_texts(app):
    """Return the texts in the messages database, by id."""
    return [
        row.text
        for row in rows(app.config["DATABASE_URL"], "SELECT text FROM messages")
    ]


def audited(app):
    """Return the audit database's entries as (action, message id, text)."""
    query = "SELECT action, message_id, text FROM audit_log ORDER BY id"
    return [tuple(row) for row in rows(app.config["AUDIT_DATABASE_URL"], query)]


def test_init_db_prepares_each_database_with_its_own_tables(step, make_app):
    app = make_app(step)
    # From step 11, Alembic's version table too, in each database.
    versions = ["alembic_version"] if step in STEPS_WITH_MIGRATIONS else []

    assert sorted(tables(app.config["DATABASE_URL"])) == [*versions, "messages"]
    assert sorted(tables(app.config["AUDIT_DATABASE_URL"])) == [*versions, "audit_log"]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_write_lands_in_the_messages_database_and_its_entry_in_the_audit_one(
    step, make_app
):
    app = make_app(step)
    client = app.test_client()

    created = client.post("/messages", json={"text": "first"}).get_json()
    client.patch(f"/messages/{created['id']}", json={"text": "second"})
    client.post("/messages", json={"text": "kept"})
    client.delete(f"/messages/{created['id']}")
    # Refused or absent: no write, no entry.
    client.post("/messages", json={"text": ""})
    client.delete("/messages/99")

    assert stored_texts(app) == ["kept"]
    assert audited(app) == [
        ("create", 1, "first"),
        ("update", 1, "second"),
        ("create", 2, "kept"),
        ("delete", 1, None),
    ]
    entries = client.get("/audit").get_json()
    assert [entry["action"] for entry in entries] == [
        "create",
        "update",
        "create",
        "delete",
    ]
    assert set(entries[0]) == {"id", "action", "message_id", "text", "at"}
    assert entries[0]["at"].endswith("+00:00")


def statements_of_both_databases(app):
    """Record each write statement sent to either database, in order."""
    sent = []
    for database in ("engine", "audit_engine"):

        def note(
            conn, cursor, statement, parameters, context, executemany, db=database
        ):
            if statement.split()[0] in ("INSERT", "UPDATE", "DELETE"):
                sent.append((db, statement.split()[0]))

        event.listen(app.extensions[database], "before_cursor_execute", note)
    return sent


@pytest.mark.parametrize(
    ("method", "path", "body", "statement"),
    [
        ("post", "/messages", {"text": "new"}, "INSERT"),
        ("patch", "/messages/1", {"text": "changed"}, "UPDATE"),
        ("delete", "/messages/1", None, "DELETE"),
    ],
)
def test_each_write_reaches_the_messages_database_before_its_audit_entry(
    step, make_app, method, path, body, statement
):
    app = make_app(step)
    client = app.test_client()
    client.post("/messages", json={"text": "first"})
    sent = statements_of_both_databases(app)

    assert getattr(client, method)(path, json=body).status_code < 300

    # Every request locks the two databases in one order, messages first:
    # on SQLite, two requests locking them in opposite orders would each
    # wait for the other until the busy timeout.
    assert sent == [("engine", statement), ("audit_engine", "INSERT")]


@pytest.mark.parametrize(
    ("change", "statement"),
    [("insert", "INSERT"), ("update", "UPDATE"), ("delete", "DELETE")],
)
def test_record_writes_the_pending_change_before_its_audit_entry(
    step, make_app, change, statement
):
    # Whatever a view left unflushed, record() writes it before its entry:
    # the order holds for a handler that relies on record() alone.
    app = make_app(step)
    app.test_client().post("/messages", json={"text": "first"})
    db = import_step(f"{step}.db")
    record = import_step(f"{step}.views").record
    sent = statements_of_both_databases(app)

    with app.app_context():
        session = db.get_session()
        Message = db.get_models().Message
        if change == "insert":
            session.add(Message(text="pending"))
        elif change == "update":
            session.get(Message, 1).text = "pending"
        else:
            session.delete(session.get(Message, 1))
        record(session, change, 1)
        session.commit()

    assert sent == [("engine", statement), ("audit_engine", "INSERT")]


def test_step_5_has_one_database_and_no_audit_log(make_app):
    client = make_app("step05_reflection").test_client()

    client.post("/messages", json={"text": "first"})

    assert client.get("/audit").status_code == 404
    assert "audit" not in pool_status(client)


def test_pool_shows_the_audit_pool_under_its_own_key_with_the_same_names(
    step, make_app
):
    app = make_app(step, engine_options={"pool_size": 3})
    client = app.test_client()
    client.post("/messages", json={"text": "hello"})

    status = pool_status(client)

    audit = status["audit"]
    assert set(audit) < set(status)
    assert audit["url"] == app.config["AUDIT_DATABASE_URL"]
    assert status["url"] == app.config["DATABASE_URL"]
    # Two engines, two pools, the same settings.
    assert audit["options"] == status["options"]
    assert audit["size"] == status["size"] == 3
    # Each database's mapping at startup opened one; the write reused it.
    assert audit["connects"] == status["connects"] == 1


def test_teardown_returns_both_databases_connections(step, make_app):
    app = make_app(step)
    monitor = import_step(f"{step}.monitor")
    db = import_step(f"{step}.db")

    @app.get("/both-checked-out")
    def both_checked_out():
        models = db.get_models()
        session = db.get_session()
        session.scalars(select(models.Message)).all()
        session.scalars(select(models.AuditEntry)).all()
        status = monitor.pool_status()
        return {"main": status["checked_out"], "audit": status["audit"]["checked_out"]}

    client = app.test_client()

    assert client.get("/both-checked-out").get_json() == {"main": 1, "audit": 1}
    status = pool_status(client)
    assert status["checked_out"] == status["audit"]["checked_out"] == 0


def test_the_audit_database_is_a_second_sqlite_file_by_default(
    step, monkeypatch, tmp_path
):
    monkeypatch.delenv("AUDIT_DATABASE_URL")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    keep_out_of_the_instance_folder(monkeypatch, tmp_path)

    app = import_step(step).create_app()

    expected = os.path.join(app.instance_path, f"{step}-audit.sqlite")
    assert app.config["AUDIT_DATABASE_URL"] == f"sqlite:///{expected}"
    assert app.config["DATABASE_URL"] != app.config["AUDIT_DATABASE_URL"]


@pytest.mark.parametrize("variable", ["AUDIT_DATABASE_URL", "FLASK_AUDIT_DATABASE_URL"])
def test_the_audit_database_url_is_read_from_the_environment(
    step, monkeypatch, tmp_path, variable
):
    monkeypatch.setenv(variable, f"sqlite:///{tmp_path / 'elsewhere.sqlite'}")
    keep_out_of_the_instance_folder(monkeypatch, tmp_path)

    app = import_step(step).create_app()

    assert pool_status(app.test_client())["audit"]["url"].endswith("elsewhere.sqlite")
    dispose_engines(app)


def test_a_forked_child_gets_fresh_pools_for_both_databases(step, make_app):
    client = make_app(step).test_client()

    def write_in_child():
        assert client.post("/messages", json={"text": "child"}).status_code == 201
        status = pool_status(client)
        return [
            status["connects_in_this_process"],
            status["audit"]["connects_in_this_process"],
        ]

    assert in_forked_child(write_in_child) == [1, 1]
    assert client.post("/messages", json={"text": "parent"}).status_code == 201


def test_when_the_audit_database_is_unreachable_requests_answer_503(step, database_url):
    # Nothing listens on port 9: every connection attempt is refused.
    app = import_step(step).create_app(
        {
            "DATABASE_URL": database_url,
            "AUDIT_DATABASE_URL": "postgresql+psycopg://audit@127.0.0.1:9/audit",
        }
    )
    app.test_cli_runner().invoke(args=["init-db"])
    client = app.test_client()

    response = client.get("/messages")

    assert response.status_code == 503
    assert response.get_json()["error"].startswith("database unavailable (")
    assert pool_status(client)["checked_out"] == 0
    dispose_engines(app)


# What one commit() over two databases makes atomic, and what it does not.


def test_a_write_that_fails_in_the_audit_database_before_commit_leaves_neither(
    step, make_app
):
    app = make_app(step)
    client = app.test_client()
    lose_connection_before(app.extensions["audit_engine"], "INSERT")

    response = client.post("/messages", json={"text": "lost"})

    assert response.status_code == 503
    # The message's INSERT had run; it was rolled back, never committed.
    assert stored_texts(app) == []
    assert audited(app) == []
    assert client.post("/messages", json={"text": "next"}).status_code == 201


def fail_the_nth_commit(app, nth):
    """Make the nth of the app's two commits fail as a lost connection would.

    Return the names of the databases in the order their commits began:
    the Session commits its connections in no set order.
    """
    began = []

    def commit(name):
        def on_commit(connection):
            began.append(name)
            if len(began) == nth:
                connection.connection.dbapi_connection.close()

        return on_commit

    for name, engine in app.extensions["engines"].items():
        event.listen(engine, "commit", commit(name))
    return began


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(("nth", "written"), [(1, 0), (2, 1)])
def test_a_commit_that_fails_leaves_written_only_what_committed_before_it(
    step, make_app, nth, written
):
    app = make_app(step)
    client = app.test_client()
    began = fail_the_nth_commit(app, nth)

    response = client.post("/messages", json={"text": "half"})

    assert response.status_code == 503
    assert len(began) == nth
    # A first commit that fails ends the request before the second runs,
    # which rolls back: neither is written. A second that fails comes after
    # the first has committed: that one stays, whichever it was.
    in_messages = stored_texts(app) == ["half"]
    in_audit = audited(app) == [("create", 1, "half")]
    assert [in_messages, in_audit].count(True) == written
    if written:
        assert {"messages": in_messages, "audit": in_audit}[began[0]]


def fail_the_second(app, phase):
    """Make the second connection's ``phase`` of two-phase commit fail.

    ``phase`` is ``prepare_twophase`` or ``commit_twophase``. Return the
    names of the databases in the order they reached it.
    """
    reached = []

    def listener(name):
        def on_phase(connection, *arguments):
            reached.append(name)
            if len(reached) == 2:
                connection.connection.dbapi_connection.close()

        return on_phase

    for name, engine in app.extensions["engines"].items():
        event.listen(engine, phase, listener(name))
    return reached


def prepared_transactions(url):
    """Name the prepared transactions waiting in a database."""
    query = "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
    return [row.gid for row in rows(url, query)]


# PostgreSQL's PREPARE TRANSACTION; SQLite has no two-phase commit.
@pytest.mark.parametrize("backend", ["postgresql"])
def test_two_phase_commit_undoes_both_when_a_prepare_fails(step, make_app):
    app = make_app(step)
    # What step 6 would change to commit in two phases: one keyword.
    app.extensions["session"].session_factory.configure(twophase=True)
    fail_the_second(app, "prepare_twophase")

    response = app.test_client().post("/messages", json={"text": "all or none"})

    assert response.status_code == 503
    # The first database had prepared its transaction; it was rolled back.
    assert stored_texts(app) == []
    assert audited(app) == []
    for url in (app.config["DATABASE_URL"], app.config["AUDIT_DATABASE_URL"]):
        assert prepared_transactions(url) == []


@pytest.mark.parametrize("backend", ["postgresql"])
def test_two_phase_commit_leaves_a_failed_commit_prepared_to_finish_later(
    step, make_app
):
    app = make_app(step)
    app.extensions["session"].session_factory.configure(twophase=True)
    reached = fail_the_second(app, "commit_twophase")

    response = app.test_client().post("/messages", json={"text": "in doubt"})

    assert response.status_code == 503
    urls = {
        "messages": app.config["DATABASE_URL"],
        "audit": app.config["AUDIT_DATABASE_URL"],
    }
    first, second = reached
    # The first committed. The second is neither committed nor lost: it
    # waits, prepared, holding its locks, until someone finishes it.
    assert prepared_transactions(urls[first]) == []
    [gid] = prepared_transactions(urls[second])
    assert (stored_texts(app), audited(app)).count([]) == 1

    engine = create_engine(urls[second], poolclass=NullPool)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
        admin.exec_driver_sql(f"COMMIT PREPARED '{gid}'")
    engine.dispose()

    assert stored_texts(app) == ["in doubt"]
    assert audited(app) == [("create", 1, "in doubt")]
