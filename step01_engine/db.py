"""The engine and the ``init-db`` command."""

import click
from flask import Flask
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import Engine
from sqlalchemy import create_engine

from .models import metadata


def init_app(app: Flask) -> None:
    """Give the app its engine, and register the CLI."""
    # One engine per app, created here and never per request: the engine
    # owns the connection pool, so requests borrow connections from it.
    engine = create_engine(app.config["DATABASE_URL"], **app.config["ENGINE_OPTIONS"])
    app.extensions["engine"] = engine
    # The app's engines by database, for the pool panel: one until step 6.
    app.extensions["engines"] = {"messages": engine}
    app.cli.add_command(init_db_command)


def get_engine() -> Engine:
    """Return the current app's engine."""
    engine: Engine = current_app.extensions["engine"]
    return engine


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the tables that do not exist yet."""
    metadata.create_all(get_engine())
    click.echo("Initialized the database.")
