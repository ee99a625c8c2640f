"""The engine, the session registry, the reflected models, and ``init-db``."""

import os
import pathlib
import threading
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask
from flask import current_app
from flask.cli import with_appcontext
from flask.typing import ResponseReturnValue
from sqlalchemy import Engine
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

from .models import Models
from .models import SchemaMissing
from .models import declare_models
from .models import map_models
from .web import unavailable

# The schema belongs to the database: init-db applies these files, standing
# in for the team's own schema tool, one file per kind of database.
SCHEMA_FOLDER = pathlib.Path(__file__).resolve().parent / "schema"
# The file of each of SQLAlchemy's dialects. A mysql+pymysql:// URL, which
# most MySQL and MariaDB users write, gives the dialect "mysql" whichever
# server it reaches, and mariadb+pymysql:// gives "mariadb": both read
# MariaDB's file.
SCHEMA_FILES = {
    "sqlite": "sqlite.sql",
    "postgresql": "postgresql.sql",
    "mariadb": "mariadb.sql",
    "mysql": "mariadb.sql",
}

# Each pool setting answers a fault seen in production; any of them can be
# overridden through the ENGINE_OPTIONS configuration key.
POOL_DEFAULTS = {
    # Ping each connection as it is checked out and replace it if the server
    # dropped it (idle timeout, restart, failover): without it, the request
    # that meets a dead connection fails.
    "pool_pre_ping": True,
    # Replace a connection at checkout once it is 30 minutes old, before a
    # server's or firewall's idle timeout can kill it unnoticed.
    "pool_recycle": 1800,
    # Keep up to 5 connections open, and open up to 10 more under load
    # (closed again when returned): the server sees at most 15 per process.
    "pool_size": 5,
    "max_overflow": 10,
    # Wait at most 10 seconds for a free connection, then answer 503 rather
    # than hang past the timeout of the proxy in front of the app.
    "pool_timeout": 10,
}


def engine_options(app_options: Mapping[str, Any]) -> dict[str, Any]:
    """Return the step's pool defaults with the app's ENGINE_OPTIONS over them."""
    options = {**POOL_DEFAULTS, **app_options}
    # None removes one of the step's defaults, leaving SQLAlchemy's: NullPool,
    # for one, takes no pool_size, max_overflow or pool_timeout.
    return {
        name: value
        for name, value in options.items()
        if not (name in POOL_DEFAULTS and value is None)
    }


def init_app(app: Flask) -> None:
    """Give the app its engine and session registry, and register the CLI."""
    # One engine per app, created here and never per request: the engine
    # owns the connection pool, so requests borrow connections from it.
    options = engine_options(app.config["ENGINE_OPTIONS"])
    engine = create_engine(app.config["DATABASE_URL"], **options)
    app.extensions["engine"] = engine
    # The app's engines by database, for the pool panel: one until step 6.
    app.extensions["engines"] = {"messages": engine}
    # Map the models from the tables as the database has them now. This
    # connects as the app is created: under gunicorn --preload, in the
    # master before it forks, which the PoolOwner below makes safe.
    models = app.extensions["models"] = ReflectedModels(engine)
    try:
        models.get()
    except SchemaMissing as error:
        # Expected before init-db, which needs the app to start: requests
        # answer 503 until it has run, then map the models themselves.
        app.logger.info("models not mapped yet: %s", str(error))
    except DBAPIError as error:
        # Start all the same: requests retry, and answer 503 meanwhile.
        app.logger.warning("models not mapped yet: %s", str(error))
    # One Session per thread: each request handled on a thread uses the
    # Session that scoped_session keeps for that thread.
    app.extensions["session"] = scoped_session(sessionmaker(bind=engine))
    # A forked child (uWSGI's workers, gunicorn --preload's, multiprocessing)
    # inherits the pool and its open connections; if both processes use one
    # socket, their traffic interleaves. The child must start a pool of its
    # own before it first uses one.
    app.extensions["pool_owner"] = PoolOwner([engine], app.extensions["session"])
    # Without this, the thread's Session would keep its transaction open
    # and its connection checked out after the request.
    app.teardown_appcontext(remove_session)
    # Until init-db has run, requests answer 503 and say how to run it.
    app.register_error_handler(SchemaMissing, schema_missing)
    app.cli.add_command(init_db_command)


def get_engine() -> Engine:
    """Return the current app's engine, with a pool of this process's own."""
    extensions = current_app.extensions
    extensions["pool_owner"].claim()
    engine: Engine = extensions["engine"]
    return engine


def get_session() -> Session:
    """Return the current thread's Session from the app's registry."""
    # One read through the current_app proxy: each read finds the app again,
    # and this runs on every request.
    extensions = current_app.extensions
    extensions["pool_owner"].claim()
    sessions: scoped_session[Session] = extensions["session"]
    return sessions()


def get_models() -> Models:
    """Return the current app's model classes, mapped from its database."""
    extensions = current_app.extensions
    extensions["pool_owner"].claim()
    models: ReflectedModels = extensions["models"]
    return models.get()


class ReflectedModels:
    """An app's model classes, mapped once the database has their tables."""

    def __init__(self, engine: Engine) -> None:
        self.declared = declare_models()
        self._engine = engine
        self._mapped = False
        self._lock = threading.Lock()

    def get(self) -> Models:
        """Return the models, mapping them first if not mapped yet."""
        if not self._mapped:
            with self._lock:
                if not self._mapped:
                    with self._engine.connect() as connection:
                        map_models(self.declared, connection)
                    self._mapped = True
        return self.declared


class PoolOwner:
    """The process that the app's pools belong to: a forked child, before
    it first uses them, takes pools of its own, whoever forked it."""

    def __init__(
        self, engines: list[Engine], sessions: scoped_session[Session]
    ) -> None:
        self.pid = os.getpid()
        self._engines = engines
        self._sessions = sessions
        self._lock = threading.Lock()

    def claim(self) -> None:
        """Give this process empty pools if the app's belong to another."""
        # A pid check, not a fork hook: uWSGI forks its workers in C, where
        # os.register_at_fork's hooks never run. One getpid() a call.
        if self.pid == os.getpid():
            return
        with self._lock:
            if self.pid != os.getpid():
                for engine in self._engines:
                    # close=False: forget the inherited connections without
                    # closing them: closing would end them for the parent.
                    engine.dispose(close=False)
                # A child forked during a request carries the thread's
                # Session over, with the parent's connection: forget it too.
                self._sessions.registry.clear()
                self.pid = os.getpid()


def remove_session(exception: BaseException | None = None) -> None:
    """Close the thread's Session and forget it when the app context ends."""
    # remove() closes the Session (rolling back what was not committed and
    # returning its connection to the pool), then drops it from the
    # registry, so the thread's next request starts with a new Session. In
    # a forked child, claim() first, so as not to close a Session inherited
    # with the parent's connection: its rollback would go over their socket.
    extensions = current_app.extensions
    extensions["pool_owner"].claim()
    sessions: scoped_session[Session] = extensions["session"]
    try:
        sessions.remove()
    except Exception as error:
        # The rollback failed after the answer was ready: the connection was
        # lost (SQLAlchemy has discarded it already), or another process
        # shares its socket and it is out of step. The answer stands rather
        # than turning into a 500; the Session is forgotten all the same, so
        # that the thread's next request starts afresh.
        current_app.logger.warning("teardown failed", exc_info=error)
        sessions.registry.clear()


def schema_missing(error: SchemaMissing) -> ResponseReturnValue:
    """Answer 503 until the database has the tables the app maps."""
    return unavailable(
        f"{error}: create it with flask --app {current_app.import_name} init-db"
    )


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the tables that do not exist yet, from the schema file."""
    engine = get_engine()
    if engine.dialect.name not in SCHEMA_FILES:
        raise click.ClickException(f"no schema file for {engine.dialect.name}")
    schema = SCHEMA_FOLDER / SCHEMA_FILES[engine.dialect.name]
    with engine.begin() as connection:
        # One statement per semicolon: enough for this schema, which has no
        # semicolon inside a statement. A schema tool parses properly.
        for statement in schema.read_text().split(";"):
            if statement.strip():
                connection.exec_driver_sql(statement)
    click.echo("Initialized the database.")
