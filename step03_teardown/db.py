"""The engine, the session registry, and the ``init-db`` command."""

import click
from flask import Flask
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import Engine
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

from .models import Base


def init_app(app: Flask) -> None:
    """Give the app its engine and session registry, and register the CLI."""
    # One engine per app, created here and never per request: the engine
    # owns the connection pool, so requests borrow connections from it.
    engine = create_engine(app.config["DATABASE_URL"], **app.config["ENGINE_OPTIONS"])
    app.extensions["engine"] = engine
    # The app's engines by database, for the pool panel: one until step 6.
    app.extensions["engines"] = {"messages": engine}
    # One Session per thread: each request handled on a thread uses the
    # Session that scoped_session keeps for that thread.
    app.extensions["session"] = scoped_session(sessionmaker(bind=engine))
    # Without this, the thread's Session would keep its transaction open
    # and its connection checked out after the request.
    app.teardown_appcontext(remove_session)
    app.cli.add_command(init_db_command)


def get_engine() -> Engine:
    """Return the current app's engine."""
    engine: Engine = current_app.extensions["engine"]
    return engine


def get_session() -> Session:
    """Return the current thread's Session from the app's registry."""
    sessions: scoped_session[Session] = current_app.extensions["session"]
    return sessions()


def remove_session(exception: BaseException | None = None) -> None:
    """Close the thread's Session and forget it when the app context ends."""
    # remove() closes the Session (rolling back what was not committed and
    # returning its connection to the pool), then drops it from the
    # registry, so the thread's next request starts with a new Session.
    sessions: scoped_session[Session] = current_app.extensions["session"]
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


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the tables that do not exist yet."""
    Base.metadata.create_all(get_engine())
    click.echo("Initialized the database.")
