"""Test isolation: every write a test makes, in every database, rolled back.

SQLAlchemy's recipe "Joining a Session into an External Transaction (such
as for test suites)", applied to the app's own session registry. Copy this
module beside your tests; ``example_tests/conftest.py`` shows the fixtures
in use.
"""

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask import has_app_context
from flask.testing import FlaskClient
from sqlalchemy import Connection
from sqlalchemy import Engine
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.orm import SessionTransaction
from sqlalchemy.orm import scoped_session

# The isolated() blocks the code running now belongs to: each block adds
# itself for the thread that entered it, and the set is copied with that
# thread's context variables into each async view its requests run. A set,
# so that a block on one app inside a block on another leaves the outer
# app's requests admitted.
_isolating: contextvars.ContextVar[frozenset[object]] = contextvars.ContextVar(
    "isolating", default=frozenset()
)


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
    inside the block, from this thread, async views included.
    """
    registry: scoped_session[Session] = app.extensions["session"]
    factory = registry.session_factory
    configured = dict(factory.kw)
    block = object()

    def refuse_other_threads(session: Session, transaction: SessionTransaction) -> None:
        # One connection serves the whole block, and a DBAPI connection is
        # not safe to share between threads: refuse, rather than let two
        # threads interleave their statements on it. An async view may run
        # on another thread (Flask's default makes one for each call) while
        # the request's thread waits for it: it belongs to the block, and it
        # has the block's context variables.
        if block not in _isolating.get():
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
        # A Session the app context in force made before the block is bound
        # to the engines, not to the held connections: start afresh.
        if has_app_context():
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
        token = _isolating.set(_isolating.get() | {block})
        try:
            yield
        finally:
            _isolating.reset(token)
            event.remove(factory, "after_transaction_create", refuse_other_threads)
            if has_app_context():
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
