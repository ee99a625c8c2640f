"""The AsyncEngines, an AsyncSession per app context, and ``init-db``."""

import asyncio
import dataclasses
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask
from flask import current_app
from flask import g
from flask import has_request_context
from flask import request
from flask.cli import with_appcontext
from sqlalchemy import URL
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from . import loops
from . import monitor
from .models import Base

# ASYNC_PATTERN's values: which event loop runs an async view, and which
# engine it uses (loops.py; docs/async.md says what each one costs).
PATTERNS = ("one-loop", "loop-per-thread", "nullpool", "pooled")

# The async driver of each of SQLAlchemy's dialects: DATABASE_URL is the
# steps' (postgresql://, sqlite:///, mariadb+pymysql://...), and the example
# swaps in the async driver of its database. aiomysql is PyMySQL driven by
# asyncio, pure Python as the steps' MariaDB driver is.
ASYNC_DRIVERS = {
    "sqlite": "aiosqlite",
    "postgresql": "psycopg",
    "mariadb": "aiomysql",
    "mysql": "aiomysql",
}

# Step 9's pool settings, for each engine's pool; ENGINE_OPTIONS overrides
# them, and None removes one.
POOL_DEFAULTS = {
    "pool_pre_ping": True,
    "pool_recycle": 1800,
    "pool_size": 5,
    "max_overflow": 10,
    "pool_timeout": 10,
}
# NullPool keeps nothing, so it takes none of the QueuePool's settings.
NULLPOOL_DEFAULTS: dict[str, Any] = {"poolclass": NullPool}

# Where the app context keeps its AsyncSession, in g.
SESSION_KEY = "_async_session"


def async_url(url: str) -> URL:
    """Return a database URL with its dialect's async driver."""
    parsed = make_url(url)
    dialect = parsed.get_backend_name()
    if dialect not in ASYNC_DRIVERS:
        raise ValueError(f"no async driver for {parsed.drivername}:// in this example")
    return parsed.set(drivername=f"{dialect}+{ASYNC_DRIVERS[dialect]}")


def engine_options(pattern: str, app_options: Mapping[str, Any]) -> dict[str, Any]:
    """Return the pattern's pool settings with the app's ENGINE_OPTIONS over them."""
    defaults = NULLPOOL_DEFAULTS if pattern == "nullpool" else POOL_DEFAULTS
    options = {**defaults, **app_options}
    return {name: value for name, value in options.items() if value is not None}


def make_runner(config: Mapping[str, Any], counts: monitor.Counts) -> loops.Runner:
    """Return the runner of the configured ASYNC_PATTERN, with its engines."""
    pattern = config["ASYNC_PATTERN"]
    if pattern not in PATTERNS:
        raise ValueError(
            f"ASYNC_PATTERN must be one of {', '.join(PATTERNS)}, not {pattern!r}"
        )
    url = async_url(config["DATABASE_URL"])
    options = engine_options(pattern, config["ENGINE_OPTIONS"])

    def make_engine() -> AsyncEngine:
        engine = create_async_engine(url, **options)
        monitor.count_connections(engine, counts)
        return engine

    if pattern == "one-loop":
        return loops.OneLoop(make_engine, url)
    if pattern == "loop-per-thread":
        return loops.LoopPerThread(make_engine, url)
    # "pooled" is the naive setup, kept as the failing baseline: a pooled
    # engine, and Flask's own new loop per call. Its second request meets a
    # connection of the first call's loop, which is gone.
    return loops.PerCallLoop(make_engine, url, flasks_own=pattern == "pooled")


class AsyncSessionFlask(Flask):
    """A Flask app whose async views run on its ASYNC_PATTERN's event loops."""

    def async_to_sync(
        self, func: Callable[..., Coroutine[Any, Any, Any]]
    ) -> Callable[..., Any]:
        """Return a sync function that runs ``func`` on the pattern's loop."""
        runner: loops.Runner = self.extensions["async_runner"]

        def call(*args: Any, **kwargs: Any) -> Any:
            closes_now = not runner.loop_outlives_the_call
            if has_request_context():
                # Read the body here, on the request's own thread: under
                # gevent, the view runs on a native thread, where reading
                # the worker's socket fails with "Cannot switch to a
                # different thread".
                request.get_data()

            async def scoped() -> Any:
                try:
                    return await func(*args, **kwargs)
                finally:
                    # Teardown runs after the call's loop is gone: the
                    # AsyncSession's connection would stay checked out of a
                    # pool whose loop can no longer close it. Close it here,
                    # on its loop, even when the view raised.
                    if closes_now:
                        await close_session()

            return runner.run(scoped)

        return call


def init_app(app: Flask) -> None:
    """Give the app its runner and engines, a teardown, and the CLI."""
    counts = app.extensions["async_counts"] = monitor.Counts()
    app.extensions["async_runner"] = make_runner(app.config, counts)
    # Without it, a pattern whose loops outlive the call would keep the app
    # context's AsyncSession, and its connection, after the request.
    app.teardown_appcontext(end_session)
    app.cli.add_command(init_db_command)


@dataclasses.dataclass(frozen=True)
class HeldSession:
    """An app context's AsyncSession, and the event loop it belongs to."""

    session: AsyncSession
    loop: asyncio.AbstractEventLoop


def get_session() -> AsyncSession:
    """Return the app context's AsyncSession, made on first use on this loop."""
    held: HeldSession | None = g.get(SESSION_KEY)
    loop = asyncio.get_running_loop()
    if held is None:
        runner: loops.Runner = current_app.extensions["async_runner"]
        # expire_on_commit=False: reading an expired attribute after commit
        # would load it lazily, which an AsyncSession cannot do.
        session = AsyncSession(runner.engine(), expire_on_commit=False)
        held = HeldSession(session, loop)
        setattr(g, SESSION_KEY, held)
        current_app.extensions["async_counts"].count("sessions_opened")
    elif held.loop is not loop:
        # Its connection is the other loop's: using it here would fail.
        raise RuntimeError("this app context's AsyncSession is another loop's")
    return held.session


async def close_session() -> None:
    """Close the app context's AsyncSession, if it has one, on this loop."""
    held: HeldSession | None = g.pop(SESSION_KEY, None)
    if held is None:
        return
    if held.loop is not asyncio.get_running_loop():
        # Never, if the runner is right: say so rather than hang or leak.
        current_app.extensions["async_counts"].count("sessions_closed")
        raise RuntimeError("the AsyncSession must be closed on its own loop")
    try:
        # Rolls back what was not committed, and gives the connection back.
        await held.session.close()
    except Exception as error:
        # The connection was lost: the answer stands rather than turning
        # into a 500, and SQLAlchemy has discarded the connection.
        current_app.logger.warning("closing the AsyncSession failed", exc_info=error)
    finally:
        current_app.extensions["async_counts"].count("sessions_closed")


def end_session(exception: BaseException | None = None) -> None:
    """Close the app context's AsyncSession as the context ends, on its loop."""
    if SESSION_KEY not in g:
        return
    runner: loops.Runner = current_app.extensions["async_runner"]
    runner.run(close_session)


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the tables that do not exist yet."""

    async def create_tables() -> None:
        runner: loops.Runner = current_app.extensions["async_runner"]
        async with runner.engine().begin() as connection:
            await connection.run_sync(Base.metadata.create_all)

    current_app.extensions["async_runner"].run(create_tables)
    click.echo("Initialized the database.")
