"""The engine, the session registry, and the ``init-db`` command."""

import os
import threading

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

from .models import Base


def init_app(app):
    """Give the app its engine and session registry, and register the CLI."""
    # One engine per app, created here and never per request: the engine
    # owns the connection pool, so requests borrow connections from it.
    engine = create_engine(app.config["DATABASE_URL"], **app.config["ENGINE_OPTIONS"])
    app.extensions["engine"] = engine
    app.extensions["connection_counter"] = ConnectionCounter(engine)
    # One Session per thread: each request handled on a thread uses the
    # Session that scoped_session keeps for that thread.
    app.extensions["session"] = scoped_session(sessionmaker(bind=engine))
    # Without this, the thread's Session would keep its transaction open
    # and its connection checked out after the request.
    app.teardown_appcontext(remove_session)
    app.cli.add_command(init_db_command)


def get_engine():
    """Return the current app's engine."""
    return current_app.extensions["engine"]


def get_session():
    """Return the current thread's Session from the app's registry."""
    return current_app.extensions["session"]()


def remove_session(exception=None):
    """Close the thread's Session and forget it when the app context ends."""
    # remove() closes the Session (rolling back what was not committed and
    # returning its connection to the pool), then drops it from the
    # registry, so the thread's next request starts with a new Session.
    current_app.extensions["session"].remove()


class ConnectionCounter:
    """Count the DBAPI connections that an engine's pool opens."""

    def __init__(self, engine):
        self.connects = 0
        self._lock = threading.Lock()
        event.listen(engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_connection, connection_record):
        with self._lock:
            self.connects += 1


def pool_status():
    """Return the state of the current app's pool, as ``/pool`` shows it."""
    engine = get_engine()
    pool = engine.pool
    return {
        "pool_class": type(pool).__name__,
        "size": _count(pool, "size"),
        "checked_in": _count(pool, "checkedin"),
        "checked_out": _count(pool, "checkedout"),
        "overflow": _count(pool, "overflow"),
        "connects": current_app.extensions["connection_counter"].connects,
        "pid": os.getpid(),
        "url": engine.url.render_as_string(hide_password=True),
    }


def _count(pool, name):
    # Only QueuePool keeps every count; NullPool, StaticPool and
    # SingletonThreadPool (in-memory SQLite) lack some: those show null.
    method = getattr(pool, name, None)
    return method() if method is not None else None


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create the tables that do not exist yet."""
    Base.metadata.create_all(get_engine())
    click.echo("Initialized the database.")
