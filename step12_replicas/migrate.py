"""Schema migrations with Alembic, on the app's own engines: ``flask db``.

The commands are Flask-Migrate's, with its names and meanings, so that a
reader's habits and scripts carry over. Alembic runs the ``migrations``
folder beside this module, in its multi-database layout: one chain of
revisions, each with a function per database, and a version table in each
database. The engines are the app's, made by the app factory: there is no
``alembic.ini`` and no URL to keep in step with the app's configuration.
"""

import argparse
import contextlib
import logging
import pathlib
import sys
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import click
from alembic import command
from alembic.config import Config
from alembic.environment import EnvironmentContext
from alembic.util import CommandError
from flask import Flask
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import Connection
from sqlalchemy import Engine
from sqlalchemy import MetaData
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.schema import SchemaItem

from .models import declare_models
from .models import metadata_of

MIGRATIONS_FOLDER = pathlib.Path(__file__).resolve().parent / "migrations"

logger = logging.getLogger("alembic.env")

db_commands = AppGroup("db", help="Schema migrations with Alembic.")


def init_app(app: Flask) -> None:
    """Register ``flask db`` and what the migrations need of the app."""
    app.config.setdefault("MIGRATIONS_FOLDER", str(MIGRATIONS_FOLDER))
    # How long a migration waits for a table's lock before it gives up, in
    # seconds: an ALTER TABLE queued behind a long transaction makes every
    # query of that table queue behind it, so the app stops answering for
    # as long as it waits. None: wait as long as the database lets it.
    app.config.setdefault("MIGRATION_LOCK_TIMEOUT", 2)
    app.extensions["migrate"] = Migrations(metadata_of(declare_models()))
    app.cli.add_command(db_commands)


class Migrations:
    """What the migrations' env.py runs: each database's revisions, on the
    connection the app's Session would use."""

    def __init__(self, metadata: dict[str, MetaData]) -> None:
        # What autogenerate and flask db check compare each database with.
        # A test may give other models' metadata here.
        self.metadata = metadata

    def run(self, context: EnvironmentContext) -> None:
        """Run the revisions (or compare the models) on each database in
        turn, as ``migrations/env.py`` asks."""
        if context.is_offline_mode():
            raise CommandError("--sql (offline mode) is not supported here")
        lock_timeout = current_app.config["MIGRATION_LOCK_TIMEOUT"]
        for database, metadata in self.metadata.items():
            # Each database's lines follow this one: current, for one,
            # prints a revision per database.
            logger.info("On the %s database", database)
            with migration_connection(database, lock_timeout) as connection:
                context.configure(
                    connection=connection,
                    target_metadata=metadata,
                    # The names script.py.mako writes each database's
                    # operations under: upgrade_messages(), upgrade_audit().
                    upgrade_token=f"{database}_upgrades",
                    downgrade_token=f"{database}_downgrades",
                    # SQLite alters little in place: batch mode copies the
                    # table, as Flask-Migrate renders by default too.
                    render_as_batch=True,
                    # Each revision in a transaction of its own, committed
                    # with its version: on a database whose DDL commits by
                    # itself (MariaDB), a revision that fails leaves the
                    # ones before it recorded.
                    transaction_per_migration=True,
                    # SQLite's DDL is transactional too, once the driver
                    # is made to begin the transaction (transactional()).
                    transactional_ddl=connection.dialect.name
                    not in ("mysql", "mariadb"),
                    include_object=owned_by_the_models,
                    process_revision_directives=skip_an_empty_autogenerate,
                )
                with context.begin_transaction():
                    context.run_migrations(engine_name=database)


def owned_by_the_models(
    item: SchemaItem,
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: SchemaItem | None,
) -> bool:
    """Tell autogenerate to leave alone the tables the models do not declare:
    a table another program owns is not the app's to drop."""
    return not (type_ == "table" and reflected and compare_to is None)


def skip_an_empty_autogenerate(
    context: Any, revision: Any, directives: list[Any]
) -> None:
    """Write no revision when autogenerate finds nothing to do in any
    database, as Flask-Migrate's env.py does."""
    if not getattr(context.config.cmd_opts, "autogenerate", False):
        return
    script = directives[0]
    # Alembic calls this after comparing each database: decide after the
    # last, when every database's operations are in.
    if len(script.upgrade_ops_list) < len(current_app.extensions["migrate"].metadata):
        return
    if all(ops.is_empty() for ops in script.upgrade_ops_list):
        directives[:] = []
        click.echo("No changes in schema detected.", err=True)


@contextlib.contextmanager
def migration_connection(
    database: str, lock_timeout: float | None
) -> Iterator[Connection]:
    """Lend the connection the app's Session would use for the database:
    a new one from its engine, or the one step 7's isolated(app) holds."""
    sessions: scoped_session[Session] = current_app.extensions["session"]
    bases = current_app.extensions["models"].declared.bases
    bind = sessions.session_factory.kw["binds"][bases[database]]
    with contextlib.ExitStack() as stack:
        if isinstance(bind, Engine):
            connection = stack.enter_context(bind.connect())
            stack.enter_context(
                waiting_for_locks_at_most(connection, lock_timeout, commit=True)
            )
            stack.enter_context(transactional(connection))
        else:
            # Inside isolated(app): the migration joins the held
            # transaction through a savepoint, and is rolled back with it.
            connection = bind
            stack.enter_context(connection.begin_nested())
            stack.enter_context(waiting_for_locks_at_most(connection, lock_timeout))
        yield connection


@contextlib.contextmanager
def transactional(connection: Connection) -> Iterator[None]:
    """Make SQLite's DDL transactional on this connection for the block.

    Python's sqlite3 begins a transaction before INSERT, UPDATE and DELETE
    only: each CREATE, ALTER or DROP commits as it runs, so a revision that
    fails halfway stays half-applied. Handed to SQLAlchemy, the transaction
    begins with BEGIN, and a failure rolls the whole revision back
    (SQLAlchemy's documentation, "Serializable isolation / Savepoints /
    Transactional DDL" for pysqlite).
    """
    if connection.dialect.name != "sqlite" or connection.in_transaction():
        yield
        return
    driver_connection: Any = connection.connection.driver_connection
    isolation_level = driver_connection.isolation_level
    driver_connection.isolation_level = None

    def emit_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    event.listen(connection, "begin", emit_begin)
    try:
        yield
    finally:
        event.remove(connection, "begin", emit_begin)
        if not connection.invalidated:
            driver_connection.isolation_level = isolation_level


# What a migration's connection waits for a lock, by database, and how to
# set it back for the pool's next borrower.
LOCK_TIMEOUTS: dict[str, tuple[Callable[[float], str], str]] = {
    "postgresql": (
        # At least 1 ms: PostgreSQL reads 0 as no limit at all.
        lambda seconds: f"SET lock_timeout = '{max(1, round(seconds * 1000))}ms'",
        "RESET lock_timeout",
    ),
    # On MariaDB, DDL waits for a metadata lock.
    "mariadb": (
        lambda seconds: f"SET SESSION lock_wait_timeout = {max(1, round(seconds))}",
        "SET SESSION lock_wait_timeout = DEFAULT",
    ),
}
LOCK_TIMEOUTS["mysql"] = LOCK_TIMEOUTS["mariadb"]


@contextlib.contextmanager
def waiting_for_locks_at_most(
    connection: Connection, seconds: float | None, commit: bool = False
) -> Iterator[None]:
    """Make the connection's statements give up waiting for a lock after
    ``seconds``, for the block.

    commit: end the transaction the setting began, before and after the
    block, so that Alembic begins its own (it runs in a transaction it finds
    open without committing it), and the setting's reset is kept.
    """
    if seconds is None or connection.dialect.name not in LOCK_TIMEOUTS:
        yield
        return
    set_timeout, reset = LOCK_TIMEOUTS[connection.dialect.name]
    connection.exec_driver_sql(set_timeout(seconds))
    if commit:
        connection.commit()
    try:
        yield
    finally:
        if not connection.invalidated:
            if connection.in_transaction() and commit:
                # What the migration left uncommitted failed: roll it back
                # before the reset.
                connection.rollback()
            connection.exec_driver_sql(reset)
            if commit:
                connection.commit()


def alembic_config() -> Config:
    """Return Alembic's configuration for the app: no file, no URL."""
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", current_app.config["MIGRATIONS_FOLDER"])
    # The databases script.py.mako writes a function for, as in Alembic's
    # multidb template.
    config.set_main_option(
        "databases", ", ".join(current_app.extensions["migrate"].metadata)
    )
    return config


@contextlib.contextmanager
def alembic_logs_to_stderr() -> Iterator[None]:
    """Show Alembic's progress ("Running upgrade ...") for one command.

    Alembic's env.py template calls logging.config.fileConfig(), which
    disables every logger it does not name, the app's too, for the rest of
    the process (Flask-Migrate #364). Here no logging is configured: a
    handler on Alembic's own logger, for the command's length.
    """
    alembic_logger = logging.getLogger("alembic")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)-5.5s [%(name)s] %(message)s"))
    # Alembic 1.20 also tells of each autogenerate plugin it sets up.
    plugins = logging.getLogger("alembic.runtime.plugins")
    levels = (alembic_logger.level, plugins.level)
    alembic_logger.addHandler(handler)
    alembic_logger.setLevel(logging.INFO)
    plugins.setLevel(logging.WARNING)
    try:
        yield
    finally:
        alembic_logger.removeHandler(handler)
        alembic_logger.setLevel(levels[0])
        plugins.setLevel(levels[1])


def upgrade(revision: str = "heads") -> None:
    """Upgrade the app's databases to ``revision``, quietly."""
    command.upgrade(alembic_config(), revision)


def running_alembic(function: Callable[..., None]) -> Callable[..., None]:
    """Run a command with Alembic's progress shown, and its errors, and the
    database's, as click's: a message and exit status 1, not a traceback."""

    def run(*args: Any, **kwargs: Any) -> None:
        with alembic_logs_to_stderr():
            try:
                function(*args, **kwargs)
            except (CommandError, SQLAlchemyError) as error:
                raise click.ClickException(str(error)) from error

    run.__name__ = function.__name__
    run.__doc__ = function.__doc__
    return run


@db_commands.command("migrate")
@click.option("-m", "--message", default=None, help="The revision's message.")
@running_alembic
def migrate_command(message: str | None) -> None:
    """Autogenerate a revision from the models' changes."""
    config = alembic_config()
    # What the hook above reads, as Alembic's own command line sets it.
    config.cmd_opts = argparse.Namespace(autogenerate=True)
    command.revision(config, message, autogenerate=True)


@db_commands.command("revision")
@click.option("-m", "--message", default=None, help="The revision's message.")
@running_alembic
def revision_command(message: str | None) -> None:
    """Write an empty revision, to fill in by hand."""
    command.revision(alembic_config(), message)


@db_commands.command("upgrade")
@click.argument("revision", default="head")
@running_alembic
def upgrade_command(revision: str) -> None:
    """Upgrade the databases, to the head by default."""
    command.upgrade(alembic_config(), revision)


@db_commands.command("downgrade")
@click.argument("revision", default="-1")
@running_alembic
def downgrade_command(revision: str) -> None:
    """Downgrade the databases to REVISION, one revision back by default."""
    command.downgrade(alembic_config(), revision)


@db_commands.command("current")
@running_alembic
def current_command() -> None:
    """Show each database's current revision."""
    command.current(alembic_config())


@db_commands.command("history")
@running_alembic
def history_command() -> None:
    """List the revisions, newest first."""
    command.history(alembic_config())


@db_commands.command("stamp")
@click.argument("revision", default="head")
@running_alembic
def stamp_command(revision: str) -> None:
    """Mark the databases as at REVISION, running nothing."""
    command.stamp(alembic_config(), revision)


@db_commands.command("check")
@running_alembic
def check_command() -> None:
    """Exit with status 1 if the models and the migrations differ."""
    command.check(alembic_config())
