"""What ``/pool`` reports: each pool's counts, its settings, and who uses it."""

import os
import threading
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

from flask import Flask
from flask import current_app
from sqlalchemy import Engine
from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool import Pool


def init_app(app: Flask) -> None:
    """Count the connections each of the app's engines opens, and its requests."""
    app.extensions["connection_counters"] = {
        name: ConnectionCounter(engine)
        for name, engine in app.extensions["engines"].items()
    }
    app.extensions["request_counter"] = RequestCounter(app)


class ConnectionCounter:
    """Count the DBAPI connections that an engine's pool opens, by process."""

    def __init__(self, engine: Engine) -> None:
        # Connections opened before the counter listens count too: a step
        # that queries as the app is created leaves one in the pool.
        self.connects = Counter({os.getpid(): _count(engine.pool, "checkedin") or 0})
        self._lock = threading.Lock()
        event.listen(engine, "connect", self._on_connect)

    def _on_connect(
        self, dbapi_connection: DBAPIConnection, connection_record: ConnectionPoolEntry
    ) -> None:
        # A forked child inherits the counts of the process that forked it;
        # counting by pid tells its own connections from inherited ones.
        with self._lock:
            self.connects[os.getpid()] += 1


class RequestCounter:
    """Count the requests the app is serving right now, ``/pool``'s aside.

    It wraps the app's WSGI callable, so a request counts until Flask has
    run every teardown function: a connection still checked out when no
    request runs is held by nothing but a Session that nobody removed.
    """

    def __init__(self, app: Flask) -> None:
        self.running = 0
        self._lock = threading.Lock()
        self._wsgi_app = app.wsgi_app
        # Flask's documented way to wrap its WSGI app, which mypy refuses:
        # "Cannot assign to a method".
        app.wsgi_app = self  # type: ignore[method-assign]

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/pool":
            return self._wsgi_app(environ, start_response)
        with self._lock:
            self.running += 1
        try:
            return self._wsgi_app(environ, start_response)
        finally:
            with self._lock:
                self.running -= 1


def pool_status() -> dict[str, Any]:
    """Return the state of the current app's pools, as ``/pool`` shows it.

    The first engine's pool is at the top level; every other engine's (step
    6's audit database) is under its name, with the same keys.
    """
    extensions = current_app.extensions
    first, *others = extensions["engines"]
    return {
        **engine_status(first),
        "requests_running": extensions["request_counter"].running,
        "pid": os.getpid(),
        **{name: engine_status(name) for name in others},
        # What a step adds to the panel: step 12, where the last reads went.
        **{
            name: report()
            for name, report in extensions.get("pool_reports", {}).items()
        },
    }


def engine_status(name: str) -> dict[str, Any]:
    """Return the state of one of the current app's engines' pool."""
    engine = current_app.extensions["engines"][name]
    connects = current_app.extensions["connection_counters"][name].connects
    pool = engine.pool
    return {
        "pool_class": type(pool).__name__,
        "size": _count(pool, "size"),
        "checked_in": _count(pool, "checkedin"),
        "checked_out": _count(pool, "checkedout"),
        "overflow": _count(pool, "overflow"),
        "connects": sum(connects.values()),
        "connects_in_this_process": connects[os.getpid()],
        "url": engine.url.render_as_string(hide_password=True),
        "options": pool_options(pool),
    }


def pool_options(pool: Pool) -> dict[str, Any]:
    """Return the settings in force, read from the pool itself."""
    # The pool keeps pre-ping, recycle and max_overflow privately: SQLAlchemy
    # offers no public accessor. Reading them here, rather than echoing the
    # configuration, shows what the pool really does.
    return {
        "pool_class": type(pool).__name__,
        "pool_pre_ping": pool._pre_ping,
        "pool_recycle": pool._recycle,
        "pool_size": _count(pool, "size"),
        "max_overflow": getattr(pool, "_max_overflow", None),
        "pool_timeout": _count(pool, "timeout"),
    }


def _count(pool: Pool, name: str) -> int | None:
    # Only QueuePool keeps every count; NullPool, StaticPool and
    # SingletonThreadPool (in-memory SQLite) lack some: those show null.
    method = getattr(pool, name, None)
    count: int | None = method() if method is not None else None
    return count
