"""Flask apps with an async view on an AsyncEngine, as readers write them.

Flask runs an ``async def`` view through asgiref's ``async_to_sync``: a new
event loop, in a new thread, for every call, closed when the call returns.
These apps keep one AsyncEngine for the app's life, as a reader keeps a sync
Engine, and let tests/test_async_failures.py and tests/test_lite_async.py
watch what its pool makes of a new loop per request:

- ``engine_app``: an AsyncEngine of the app's own, a view that opens an
  AsyncSession in ``async with`` and reads one row.
- ``lite_app``: Flask-SQLAlchemy-Lite's ``SQLALCHEMY_ASYNC_ENGINES``, a view
  that reads through ``db.async_session``, which Lite closes at teardown.

Each answers ``GET /read`` with ``{"one": 1}``, or a 500 whose JSON names the
exception as ``module.Class: message``, and ``GET /pool`` with what its
engine's events counted in this process: connections opened, and checked
out now. Under gunicorn, ``app`` is built from ASYNC_APP (engine or lite),
ASYNC_DATABASE_URL, ASYNC_POOL (queue, the default pool, or null) and, for
the engine app, ASYNC_FIRST_CONNECT_SECONDS.
"""

import asyncio
import os
import time

from flask import Flask
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

QUERY = "SELECT 1"


def described(error):
    """Return an exception as ``module.Class: message``."""
    return f"{type(error).__module__}.{type(error).__qualname__}: {error}"


def count_connections(engine):
    """Count, in a dict, the connections the engine opens and holds out."""
    counts = {"opened": 0, "checked_out": 0}

    def opened(*args):
        counts["opened"] += 1

    def checked_out(*args):
        counts["checked_out"] += 1

    def checked_in(*args):
        counts["checked_out"] -= 1

    event.listen(engine.sync_engine, "connect", opened)
    event.listen(engine.sync_engine, "checkout", checked_out)
    event.listen(engine.sync_engine, "checkin", checked_in)
    return counts


def add_routes(app, engine, read):
    """Add /read, which awaits ``read()``, and /pool, and an error handler
    that answers 500 with the exception's name and message."""
    counts = count_connections(engine)
    app.extensions["async_engine"] = engine
    app.extensions["connection_counts"] = counts

    @app.get("/read")
    async def read_one():
        return {"one": await read()}

    @app.get("/pool")
    def pool():
        return {**counts, "pid": os.getpid()}

    @app.errorhandler(Exception)
    def server_error(error):
        return {"error": described(error)}, 500

    return app


def engine_app(url, hold_seconds=0.0, first_connect_seconds=0.0, **engine_options):
    """Return an app with an AsyncEngine of its own and an async view; with
    ``hold_seconds``, the view keeps its connection that long after reading;
    with ``first_connect_seconds``, the engine's first connection takes that
    much longer, as one over TLS to a distant server may."""
    app = Flask("async_engine_app")
    # One engine, and its pool, for the app's life: made here, used by
    # every request's event loop.
    engine = create_async_engine(url, **engine_options)
    if first_connect_seconds:
        event.listen(
            engine.sync_engine,
            "first_connect",
            lambda *args: time.sleep(first_connect_seconds),
        )

    async def read():
        async with AsyncSession(engine) as session:
            one = (await session.execute(text(QUERY))).scalar()
            await asyncio.sleep(hold_seconds)
            return one

    return add_routes(app, engine, read)


def lite_app(url, close_in_view=False, **engine_options):
    """Return an app with Flask-SQLAlchemy-Lite's async engine, and an async
    view that reads through ``db.async_session``; with ``close_in_view``,
    the view closes the session itself before it returns."""
    from flask_sqlalchemy_lite import SQLAlchemy

    app = Flask("lite_async_app")
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": {"url": url, **engine_options}}
    db = SQLAlchemy(app)
    with app.app_context():
        engine = db.async_engine

    async def read():
        one = (await db.async_session.execute(text(QUERY))).scalar()
        if close_in_view:
            await db.async_session.close()
        return one

    return add_routes(app, engine, read)


def from_environment():
    """Build the app that ASYNC_APP, ASYNC_DATABASE_URL and ASYNC_POOL name."""
    make = {"engine": engine_app, "lite": lite_app}[os.environ["ASYNC_APP"]]
    options = {"poolclass": NullPool} if os.environ.get("ASYNC_POOL") == "null" else {}
    if seconds := os.environ.get("ASYNC_FIRST_CONNECT_SECONDS"):
        options["first_connect_seconds"] = float(seconds)
    return make(os.environ["ASYNC_DATABASE_URL"], **options)


if "ASYNC_APP" in os.environ:
    app = from_environment()


def engine_of(app) -> AsyncEngine:
    """Return the app's AsyncEngine."""
    return app.extensions["async_engine"]
