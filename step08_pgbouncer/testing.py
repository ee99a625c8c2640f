"""Test isolation: every write a test makes, in every database, rolled back.

SQLAlchemy's recipe "Joining a Session into an External Transaction (such
as for test suites)", applied to the app's own session registry. Copy this
module beside your tests; ``example_tests/conftest.py`` shows the fixtures
in use.
"""

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection
from sqlalchemy import Engine
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.orm import SessionTransaction
from sqlalchemy.orm import scoped_session

# A savepoint isolated() sets as the block begins, which only the end of the
# held transaction (a commit or a rollback) can take away.
BLOCK_SAVEPOINT = "isolated_block"


class IsolationError(RuntimeError):
    """isolated(app) cannot keep the block's writes apart: another thread
    asked for its connection, or a statement ended its transaction."""


@contextlib.contextmanager
def isolated(app: Flask) -> Iterator[None]:
    """Run the block with every database write of the app rolled back after.

    Each of the app's engines lends one connection for the whole block, in
    a transaction that is never committed. The app's Sessions join it
    through savepoints: ``commit()`` releases a savepoint, ``rollback()``
    and teardown's ``remove()`` roll back to one, and the app's code runs
    unchanged. On exit, the outer transactions roll back, and the
    connections go back to their pools as they were. No app context is
    needed, and any number of requests and app contexts may come and go
    inside the block, from this thread.
    """
    registry: scoped_session[Session] = app.extensions["session"]
    factory = registry.session_factory
    configured = dict(factory.kw)
    owner = threading.get_ident()

    def refuse_other_threads(session: Session, transaction: SessionTransaction) -> None:
        # One connection serves the whole block, and a DBAPI connection is
        # not safe to share between threads: refuse, rather than let two
        # threads interleave their statements on it.
        if threading.get_ident() != owner:
            raise IsolationError(
                "isolated(app) holds one connection per database for the"
                " thread that entered it; this Session belongs to another"
                " thread. Send the test's requests from its own thread, or"
                " test concurrency against a database without isolation."
            )

    with contextlib.ExitStack() as stack:
        connections = {
            engine: stack.enter_context(hold_in_a_transaction(engine))
            for engine in app.extensions["engines"].values()
        }
        # A Session this thread made before the block is bound to the
        # engines, not to the held connections: start afresh.
        registry.remove()
        factory.configure(
            bind=connections[configured["bind"]],
            binds={
                mapped: connections[engine]
                for mapped, engine in configured["binds"].items()
            },
            # Join the held connection's transaction with a savepoint, so
            # that the app's commit() and rollback() stay inside it.
            join_transaction_mode="create_savepoint",
        )
        event.listen(factory, "after_transaction_create", refuse_other_threads)
        try:
            yield
        finally:
            event.remove(factory, "after_transaction_create", refuse_other_threads)
            registry.remove()
            factory.kw.clear()
            factory.kw.update(configured)


@contextlib.contextmanager
def hold_in_a_transaction(engine: Engine) -> Iterator[Connection]:
    """Check out a connection of the engine, in a transaction rolled back after."""
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Python's sqlite3 begins and ends transactions its own way,
            # which breaks SAVEPOINT: hand them to SQLAlchemy for this one
            # connection (SQLAlchemy's notes on pysqlite transactions), and
            # give it back as it was, so the app's own behaviour is kept.
            driver_connection: Any = connection.connection.driver_connection
            isolation_level = driver_connection.isolation_level
            driver_connection.isolation_level = None
        transaction = connection.begin()
        if sqlite:
            connection.exec_driver_sql("BEGIN")
        connection.exec_driver_sql(f"SAVEPOINT {BLOCK_SAVEPOINT}")
        try:
            yield connection
        finally:
            # Checked even if the block failed: a commit inside it is what
            # makes the app's next RELEASE SAVEPOINT fail. Raised from here,
            # the block's own error, if any, comes with it as the context.
            ended = ended_meanwhile(connection)
            if transaction.is_active:
                transaction.rollback()
            if sqlite and not connection.invalidated:
                driver_connection.isolation_level = isolation_level
            if ended:
                raise IsolationError(
                    "a statement inside isolated(app) ended the held transaction"
                    f" on {connection.dialect.name}, with a commit or a rollback"
                    " of its own: the block's writes before it are not rolled"
                    " back by the block. MariaDB and MySQL commit by themselves"
                    " before and after DDL (CREATE, ALTER, DROP, TRUNCATE,"
                    " RENAME): create tables before the block."
                )


def ended_meanwhile(connection: Connection) -> bool:
    """Say whether a commit or a rollback ended the held transaction."""
    if connection.invalidated:
        # Lost: the server rolled it back, as the block would have.
        return False
    # On the driver's connection, under SQLAlchemy's bookkeeping: after a
    # commit inside the block, the app's savepoint has gone too, and
    # SQLAlchemy refuses statements until it is rolled back, which fails.
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None  # checked out, and not invalidated
    cursor = dbapi_connection.cursor()
    try:
        # Ending the transaction ends its savepoints.
        cursor.execute(f"ROLLBACK TO SAVEPOINT {BLOCK_SAVEPOINT}")
    except connection.dialect.loaded_dbapi.Error as error:
        return not connection.dialect.is_disconnect(error, dbapi_connection, cursor)
    finally:
        cursor.close()
    return False


@pytest.fixture
def isolated_app(app: Flask) -> Iterator[Flask]:
    """Return the ``app`` fixture's app, its writes rolled back after the test."""
    with isolated(app):
        yield app


@pytest.fixture
def client(isolated_app: Flask) -> FlaskClient:
    """Return a test client of the isolated app."""
    return isolated_app.test_client()
