"""Engines for two databases and the standbys of the first, a routing Session
per app context, the models, and ``init-db``."""

import os
import threading
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask
from flask import current_app
from flask import has_request_context
from flask import request
from flask.cli import with_appcontext
from flask.globals import app_ctx
from flask.typing import ResponseReturnValue
from sqlalchemy import Engine
from sqlalchemy import create_engine
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

from . import migrate
from . import replicas
from .models import Models
from .models import SchemaMissing
from .models import check_tables
from .models import declare_models
from .web import unavailable

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


# Behind a pooler in transaction mode (PgBouncer), each transaction may run
# on another server connection: BEHIND_POOLER puts these over the above.
# The QueuePool stays: a pooled connection to PgBouncer costs the server
# nothing while idle, and opening one per request (NullPool) measured
# slower in bench/scale_out.py.
BEHIND_POOLER_DEFAULTS: dict[str, Any] = {
    # Pre-ping would check the link to PgBouncer, not the server connection
    # the request will use: its SELECT 1 is a transaction of its own, which
    # waits for one of PgBouncer's few server connections, and then the
    # request's transaction waits again: a transaction more per request,
    # measured in bench/scale_out.py.
    # Without it, after a PgBouncer restart the first request on a pooled
    # connection answers 503, and SQLAlchemy replaces the whole pool.
    "pool_pre_ping": False,
    "connect_args": {
        # psycopg prepares a statement on the server once it has run 5 times
        # on one connection, and later runs it by name: on whichever server
        # connection PgBouncer gives that transaction, which may not have it
        # ('prepared statement "_pg3_0" does not exist') or may have another
        # of that name ("already exists"). None: never prepare.
        "prepare_threshold": None,
    },
}


def init_app(app: Flask) -> None:
    """Give the app its engines and session registry, and register the CLI."""
    # One engine per database and app, created here and never per request:
    # each engine owns its database's connection pool, with the same
    # settings, so requests borrow connections from both.
    engine = create_engine_for(app.config["DATABASE_URL"], app.config)
    audit_engine = create_engine_for(app.config["AUDIT_DATABASE_URL"], app.config)
    app.extensions["engine"] = engine
    app.extensions["audit_engine"] = audit_engine
    databases = {"messages": engine, "audit": audit_engine}
    # The messages database's standbys, read-only copies that the primary
    # streams its changes to: an engine, and its own pool, for each.
    standbys = {
        name: create_engine_for(url, app.config)
        for name, url in standby_urls(app.config).items()
    }
    engines = app.extensions["engines"] = {**databases, **standbys}
    # The models are declared in models.py, and the migrations give the
    # databases their tables. Check that they have them: this connects as
    # the app is created, under gunicorn --preload in the master before it
    # forks, which the PoolOwner below makes safe.
    models = app.extensions["models"] = CheckedModels(databases)
    try:
        models.get()
    except SchemaMissing as error:
        # Expected before init-db, which needs the app to start: requests
        # answer 503 until it has run, then check again themselves.
        app.logger.info("models not mapped yet: %s", str(error))
    except DBAPIError as error:
        # Start all the same: requests retry, and answer 503 meanwhile.
        app.logger.warning("models not mapped yet: %s", str(error))
    # One Session per app context, not per thread: scoped_session keeps a
    # Session for each app context, and the teardown below removes the one
    # whose context ends. Flask runs an async view in a thread made for the
    # call, greenlets share a thread, and app contexts nest on one: keyed
    # by thread, each would share or lose the request's Session. Its binds
    # send each class's statements to the engine of its base's database,
    # and commit() commits on both.
    bases = models.declared.bases
    binds = {bases["messages"]: engine, bases["audit"]: audit_engine}
    # The Session sends the messages database's reads to a standby that has
    # the client's last write, and the rest to the primary (replicas.py).
    routing = app.extensions["routing"] = replicas.Routing(
        engine,
        standbys,
        app.config["REPLICA_RETRY_SECONDS"],
        last_write_of_the_client,
    )
    if standbys:
        # /pool says where this process's last reads went, and why; the
        # page, where its own went.
        app.extensions["pool_reports"] = {"reads": lambda: routing.last_reads}
        app.context_processor(where_the_reads_went)
    # With no standby, step 11's plain Session: routing nothing costs nothing.
    session_factory = (
        sessionmaker(
            class_=replicas.RoutingSession, bind=engine, binds=binds, routing=routing
        )
        if standbys
        else sessionmaker(bind=engine, binds=binds)
    )
    app.extensions["session"] = scoped_session(
        session_factory, scopefunc=current_app_context
    )
    # A forked child (uWSGI's workers, gunicorn --preload's, multiprocessing)
    # inherits the pool and its open connections; if both processes use one
    # socket, their traffic interleaves. The child must start a pool of its
    # own before it first uses one.
    app.extensions["pool_owner"] = PoolOwner(
        list(engines.values()), app.extensions["session"]
    )
    # Without this, the app context's Session would keep its transaction
    # open and its connection checked out after the request.
    app.teardown_appcontext(remove_session)
    # Until init-db has run, requests answer 503 and say how to run it.
    app.register_error_handler(SchemaMissing, schema_missing)
    app.cli.add_command(init_db_command)


def create_engine_for(url: str, config: Mapping[str, Any]) -> Engine:
    """Create a database's engine with the step's settings and the app's."""
    app_options = config["ENGINE_OPTIONS"]
    if not isinstance(config["BEHIND_POOLER"], bool):
        # FLASK_BEHIND_POOLER=False is the string "False", which is true:
        # only JSON's true and false say what they mean.
        raise ValueError(
            "BEHIND_POOLER must be true or false (FLASK_BEHIND_POOLER=true),"
            f" not {config['BEHIND_POOLER']!r}"
        )
    if config["BEHIND_POOLER"]:
        if make_url(url).get_driver_name() != "psycopg":
            raise ValueError(
                "BEHIND_POOLER is for PostgreSQL through psycopg"
                f" (postgresql+psycopg://...), not {make_url(url).drivername}"
            )
        app_options = {
            **BEHIND_POOLER_DEFAULTS,
            **app_options,
            # The app's connect_args add to these rather than replace them.
            "connect_args": {
                **BEHIND_POOLER_DEFAULTS["connect_args"],
                **app_options.get("connect_args", {}),
            },
        }
    return create_engine(url, **engine_options(app_options))


def standby_urls(config: Mapping[str, Any]) -> dict[str, str]:
    """Return REPLICA_DATABASE_URLS by name: "standby", or "standby 1", ..."""
    urls = config["REPLICA_DATABASE_URLS"]
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        # FLASK_REPLICA_DATABASE_URLS=postgresql://... is a string: only
        # JSON's list says there may be several.
        raise ValueError(
            "REPLICA_DATABASE_URLS must be a list of URLs"
            """ (FLASK_REPLICA_DATABASE_URLS='["postgresql+psycopg://..."]'),"""
            f" not {urls!r}"
        )
    if not urls:
        return {}
    for url in [config["DATABASE_URL"], *urls]:
        if make_url(url).get_backend_name() != "postgresql":
            raise ValueError(
                "REPLICA_DATABASE_URLS are PostgreSQL standbys of a PostgreSQL"
                f" DATABASE_URL, not {make_url(url).drivername}"
            )
    if len(urls) == 1:
        return {"standby": urls[0]}
    return {f"standby {number}": url for number, url in enumerate(urls, 1)}


def last_write_of_the_client() -> str | None:
    """Return the WAL position of the client's last write, from its cookie."""
    if not has_request_context():
        return None
    # Most clients send no such cookie: a look at the raw header spares
    # their reads werkzeug's parse of every cookie (3% of a read).
    if replicas.POSITION_COOKIE not in request.environ.get("HTTP_COOKIE", ""):
        return None
    return replicas.position_from(request.cookies.get(replicas.POSITION_COOKIE))


def where_the_reads_went() -> dict[str, Any]:
    """Give the page where its request's reads went, and why."""
    return {"reads": get_session().info.get(replicas.READS)}


def current_app_context() -> int:
    """Return the key of the app context in force: what a Session belongs to."""
    # Flask-SQLAlchemy 3's scope (flask_sqlalchemy.session._app_ctx_id). An
    # async view runs with a copy of the request's context variables, so it
    # finds the request's app context, and so does its teardown. The id, not
    # the context itself, so that the registry does not keep a context
    # alive; teardown always removes its entry (remove_session), so that no
    # later context, given the same id, finds it. Outside an app context,
    # this raises: "Working outside of application context". app_ctx is
    # a proxy, typed as the AppContext it stands for, so type checkers do
    # not know its _get_current_object(), as Flask-SQLAlchemy notes too.
    return id(app_ctx._get_current_object())  # type: ignore[attr-defined]


def get_session() -> Session:
    """Return the app context's Session from the app's registry."""
    # One read through the current_app proxy: each read finds the app again,
    # and this runs on every request.
    extensions = current_app.extensions
    extensions["pool_owner"].claim()
    sessions: scoped_session[Session] = extensions["session"]
    return sessions()


def get_models() -> Models:
    """Return the model classes, once the current app's databases have
    their tables."""
    extensions = current_app.extensions
    extensions["pool_owner"].claim()
    models: CheckedModels = extensions["models"]
    return models.get()


class CheckedModels:
    """The model classes, given out once the databases have their tables."""

    def __init__(self, engines: dict[str, Engine]) -> None:
        self.declared = declare_models()
        self._engines = engines
        self._unchecked = list(engines)
        self._lock = threading.Lock()

    def get(self) -> Models:
        """Return the models, checking the databases' tables first if not
        seen yet: once seen, never again, so that a request costs nothing."""
        if self._unchecked:
            with self._lock:
                for database in list(self._unchecked):
                    with self._engines[database].connect() as connection:
                        check_tables(database, connection)
                    self._unchecked.remove(database)
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
                # A child forked during a request carries the app context's
                # Session over, with the parent's connection: forget it too.
                self._sessions.registry.clear()
                self.pid = os.getpid()


def remove_session(exception: BaseException | None = None) -> None:
    """Close the app context's Session and forget it when the context ends."""
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
        # that no later app context finds it.
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
    """Upgrade both databases to the migrations' head: create the tables."""
    # The migrations own the schema (migrate.py): init-db is flask db
    # upgrade, quietly, so that a new database and make run need one command.
    migrate.upgrade("heads")
    click.echo("Initialized the database.")
