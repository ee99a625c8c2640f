"""Step 11's ``flask db migrate`` against Flask-Migrate 4.1's, and its blind spots.

Both tools hand the models to Alembic's autogenerate. The same change is
made to the models of a Flask-SQLAlchemy 3.1 + Flask-Migrate 4.1 app
(``flask db init --multidb``, the audit table under a bind) and to step
11's, each app on databases of its own at the same starting schema; each
tool's ``flask db migrate`` writes a revision, and the operations of the
two are the same. Then what autogenerate does not see (Alembic's
documentation, "What does Autogenerate Detect (and what does it not
detect?)" and "The Importance of Naming Constraints"): a rename, a
constraint without a name on SQLite, and a table the app does not own,
which only step 11 leaves alone.
"""

import ast
import contextlib
import logging
import shutil
import textwrap
from datetime import datetime

import pytest
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey
from sqlalchemy import Identity
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import create_engine
from sqlalchemy import inspect
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.pool import NullPool

from step11_migrations import create_app
from step11_migrations import migrate
from step11_migrations.models import MARIADB_TABLE
from step11_migrations.models import MAX_TEXT_LENGTH
from step11_migrations.models import NAMING_CONVENTION
from step11_migrations.models import Timestamp
from step11_migrations.models import utc_now
from testbed.step_apps import close_app

from .conftest import ALL_BACKENDS
from .conftest import BACKENDS

# Flask-Migrate 4.1's env.py asks Flask-SQLAlchemy for db.get_engine() before
# db.engines, and 3.1 warns that get_engine() is deprecated: outside a test
# run, Python shows a DeprecationWarning only for __main__'s code.
pytestmark = pytest.mark.filterwarnings(
    "ignore:'get_engine' is deprecated:DeprecationWarning"
)

# The changes that declare a third table, tags, in the messages database.
TAGS = ("added table", "tags lose their foreign key", "tag names not unique")


def declare_models(messages_base, audit_base, change=None):
    """Declare step 11's models (models.py) on the bases given, with a change."""

    class Message(messages_base):
        __tablename__ = "messages"
        __table_args__ = MARIADB_TABLE

        id: Mapped[int] = mapped_column(Identity(), primary_key=True)
        text: Mapped[str] = mapped_column(String(MAX_TEXT_LENGTH))
        created_at: Mapped[datetime] = mapped_column(
            Timestamp, server_default=utc_now(), index=change == "added index"
        )
        if change == "added column":
            author: Mapped[str | None] = mapped_column(String(100))

    class AuditEntry(audit_base):
        __tablename__ = "audit_log"
        __table_args__ = MARIADB_TABLE

        id: Mapped[int] = mapped_column(Identity(), primary_key=True)
        action: Mapped[str] = mapped_column(String(10))
        message_id: Mapped[int] = mapped_column(index=True)
        if change == "renamed column":
            body: Mapped[str | None] = mapped_column(String(MAX_TEXT_LENGTH))
        elif change != "dropped column":
            text: Mapped[str | None] = mapped_column(String(MAX_TEXT_LENGTH))
        at: Mapped[datetime] = mapped_column(Timestamp, server_default=utc_now())

    if change in TAGS:

        class Tag(messages_base):
            __tablename__ = "tags"
            __table_args__ = MARIADB_TABLE

            id: Mapped[int] = mapped_column(Identity(), primary_key=True)
            if change == "tags lose their foreign key":
                message_id: Mapped[int]
            else:
                message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
            name: Mapped[str] = mapped_column(
                String(50), unique=change != "tag names not unique"
            )


def step11_metadata(change=None, naming_convention=NAMING_CONVENTION):
    """Return the MetaData of each of step 11's databases, its models with
    the change: what its autogenerate compares the databases with.

    naming_convention=None: SQLAlchemy's default, which names indexes only.
    """

    class MessagesBase(DeclarativeBase):
        metadata = MetaData(naming_convention=naming_convention)

    class AuditBase(DeclarativeBase):
        metadata = MetaData(naming_convention=naming_convention)

    declare_models(MessagesBase, AuditBase, change)
    return {"messages": MessagesBase.metadata, "audit": AuditBase.metadata}


def step11_app(databases, folder, change=None):
    """Return step 11's app on its databases and a migrations folder, its
    models with the change."""
    app = create_app({"TESTING": True, **databases, "MIGRATIONS_FOLDER": str(folder)})
    app.extensions["migrate"].metadata = step11_metadata(change)
    return app


def flask_migrate_app(databases, folder, change=None):
    """Return a Flask-SQLAlchemy 3.1 + Flask-Migrate 4.1 app with step 11's
    models, the change made, the audit table under the "audit" bind."""
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=databases["DATABASE_URL"],
        SQLALCHEMY_BINDS={"audit": databases["AUDIT_DATABASE_URL"]},
    )
    db = SQLAlchemy(app, metadata=MetaData(naming_convention=NAMING_CONVENTION))

    class AuditModel(db.Model):
        __abstract__ = True
        __bind_key__ = "audit"

    declare_models(db.Model, AuditModel, change)
    Migrate(app, db, directory=str(folder))
    return app


def close(app):
    """Close the pools of an app's engines: step 11's, or Flask-SQLAlchemy's."""
    if "sqlalchemy" not in app.extensions:
        close_app(app)
        return
    with app.app_context():
        for engine in app.extensions["sqlalchemy"].engines.values():
            engine.dispose()


@pytest.fixture
def apps():
    """Return a function that makes an app, closed after the test."""
    made = []

    def make(factory, *args):
        app = factory(*args)
        made.append(app)
        return app

    yield make
    for app in made:
        close(app)


@contextlib.contextmanager
def logging_kept_as_it_was():
    """Undo, for the later tests, what Flask-Migrate's env.py does to logging.

    Its fileConfig(alembic.ini) disables every logger the file does not
    name and replaces the root logger's handlers (pytest's among them)
    with its own, for the rest of the process (Flask-Migrate #364, and
    #330 for pytest's).
    """
    loggers = [logging.root] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    saved = [
        (logger, logger.disabled, logger.level, logger.propagate, [*logger.handlers])
        for logger in loggers
    ]
    try:
        yield
    finally:
        for logger, disabled, level, propagate, handlers in saved:
            logger.disabled = disabled
            logger.level = level
            logger.propagate = propagate
            logger.handlers[:] = handlers


def flask_db(app, *args):
    """Run ``flask db ...`` on the app, as a person would; return its result."""
    with logging_kept_as_it_was():
        return app.test_cli_runner().invoke(args=["db", *args])


def succeeds(app, *args):
    """Run ``flask db ...`` and check that it succeeded."""
    result = flask_db(app, *args)
    assert result.exit_code == 0, result.output


def migrate_writes(app, folder):
    """Run ``flask db migrate``; return the path of the revision it wrote
    in the migrations folder, or None."""
    versions = folder / "versions"
    before = set(versions.glob("*.py"))
    succeeds(app, "migrate", "-m", "The change.")
    [*written] = set(versions.glob("*.py")) - before
    assert len(written) <= 1, written
    return written[0] if written else None


def operations(path, databases=None):
    """Return the statements of each upgrade_<database>() and
    downgrade_<database>() function of a revision, comments left out.

    databases: the names the revision's functions give the databases, and
    step 11's names for them.
    """
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and "_" in node.name:
            direction, database = node.name.split("_", 1)
            if databases is not None:
                database = databases[database]
            found[f"{direction}_{database}"] = [
                ast.unparse(statement) for statement in node.body
            ]
    return found


def edit_function(path, name, body):
    """Replace a function of a revision by one with the body given, as a
    person editing the revision would."""
    lines = path.read_text().splitlines(keepends=True)
    nodes = ast.parse(path.read_text()).body
    index = next(i for i, node in enumerate(nodes) if getattr(node, "name", "") == name)
    start = nodes[index].lineno - 1
    end = nodes[index + 1].lineno - 1 if index + 1 < len(nodes) else len(lines)
    lines[start:end] = [
        f"def {name}() -> None:\n",
        textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n\n\n",
    ]
    path.write_text("".join(lines))


def sql(url, statement):
    """Run one SQL statement on a database and commit; return its rows."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement))
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


def copy_of_the_migrations(folder):
    """Copy step 11's migrations folder, for the revisions a test writes."""
    shutil.copytree(
        migrate.MIGRATIONS_FOLDER, folder, ignore=shutil.ignore_patterns("__pycache__")
    )
    return folder


def databases_of_its_own(new_database, tool):
    """Return two new databases for a tool's app."""
    return {
        "DATABASE_URL": new_database(f"{tool}_messages"),
        "AUDIT_DATABASE_URL": new_database(f"{tool}_audit"),
    }


def upgraded_step11_app(apps, databases, tmp_path):
    """Return step 11's app on its databases, upgraded to the head, and the
    copy of the migrations it runs."""
    folder = copy_of_the_migrations(tmp_path / "step11")
    app = apps(step11_app, databases, folder)
    succeeds(app, "upgrade")
    return app, folder


# The two apps the comparison runs, by the folder of their migrations.
TOOLS = {"step11": step11_app, "flask_migrate": flask_migrate_app}

# Flask-Migrate's multidb revisions name a database's functions after its
# bind key: upgrade_() for the default one, upgrade_audit() for the
# "audit" bind. Step 11's after the database: upgrade_messages().
FLASK_MIGRATE_DATABASES = {"": "messages", "audit": "audit"}


@pytest.fixture
def starting_point(new_database, tmp_path, apps):
    """Upgrade step 11's databases and a Flask-Migrate app's to the same
    starting schema; return each tool's databases.

    Step 11's by its two revisions; Flask-Migrate's as its users start:
    ``flask db init --multidb``, the revision its autogenerate writes for
    the same models, ``flask db upgrade``. ``flask db check`` then finds
    nothing to do on either: each database has what the models declare,
    and to autogenerate, declare_models() here is step 11's models.py.
    """
    databases = {tool: databases_of_its_own(new_database, tool) for tool in TOOLS}
    step11, _ = upgraded_step11_app(apps, databases["step11"], tmp_path)
    succeeds(step11, "check")
    for command in (
        ["init", "--multidb"],
        ["migrate", "-m", "The starting schema."],
        ["upgrade"],
        ["check"],
    ):
        # An app for each command, as each flask command is a process of
        # its own: Flask-Migrate's env.py keeps its hook in the app's
        # configure_args, with the first command's options (autogenerate),
        # and a check after a migrate in one process fails in IndexError.
        folder = tmp_path / "flask_migrate"
        app = apps(flask_migrate_app, databases["flask_migrate"], folder)
        succeeds(app, *command)
    return databases


def autogenerate(apps, starting_point, tmp_path, change=None):
    """Run each tool's ``flask db migrate`` for models with the change;
    return the operations each wrote, by step 11's names for the
    functions, or None for a tool that wrote no revision."""
    written = {}
    for tool, factory in TOOLS.items():
        folder = tmp_path / tool
        app = apps(factory, starting_point[tool], folder, change)
        revision = migrate_writes(app, folder)
        databases = FLASK_MIGRATE_DATABASES if tool == "flask_migrate" else None
        written[tool] = revision and operations(revision, databases)
    return written


# Each change, the database it changes and an operation of its upgrade.
CHANGES = {
    "added column": (
        "messages",
        "batch_op.add_column(sa.Column('author', sa.String(length=100),"
        " nullable=True))",
    ),
    "dropped column": ("audit", "batch_op.drop_column('text')"),
    "added table": ("messages", "op.create_table('tags'"),
    "added index": (
        "messages",
        "batch_op.create_index(batch_op.f('ix_messages_created_at'),"
        " ['created_at'], unique=False)",
    ),
}


# 1. The same change, the same operations.


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("change", CHANGES)
def test_flask_db_migrate_writes_the_operations_flask_migrate_writes(
    apps, starting_point, tmp_path, change
):
    written = autogenerate(apps, starting_point, tmp_path, change)

    assert written["step11"] == written["flask_migrate"]
    # Not two empty revisions alike: the change is in the upgrade of the
    # database its model is in, undone in its downgrade, and the other
    # database's functions do nothing.
    database, operation = CHANGES[change]
    assert operation in "\n".join(written["step11"][f"upgrade_{database}"])
    assert written["step11"][f"downgrade_{database}"] != ["pass"]
    other = ({"messages", "audit"} - {database}).pop()
    assert written["step11"][f"upgrade_{other}"] == ["pass"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_with_the_models_unchanged_neither_writes_a_revision(
    apps, starting_point, tmp_path
):
    written = autogenerate(apps, starting_point, tmp_path)

    assert written == {"step11": None, "flask_migrate": None}


# 2. What autogenerate does not see.


def audit_texts(app, column):
    """Return a column of the audit log, by id."""
    url = app.config["AUDIT_DATABASE_URL"]
    return [row[0] for row in sql(url, f"SELECT {column} FROM audit_log ORDER BY id")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rename_is_written_as_a_drop_and_an_add_and_loses_the_data_until_edited(
    apps, new_database, tmp_path
):
    databases = databases_of_its_own(new_database, "step11")
    app, folder = upgraded_step11_app(apps, databases, tmp_path)
    client = app.test_client()
    assert client.post("/messages", json={"text": "before"}).status_code == 201
    # The models call audit_log.text body now.
    app.extensions["migrate"].metadata = step11_metadata("renamed column")
    revision = migrate_writes(app, folder)

    # A column gone and another come: nothing tells autogenerate they are one.
    assert operations(revision)["upgrade_audit"] == [
        "with op.batch_alter_table('audit_log', schema=None) as batch_op:\n"
        "    batch_op.add_column(sa.Column('body', sa.String(length=500),"
        " nullable=True))\n"
        "    batch_op.drop_column('text')"
    ]
    succeeds(app, "upgrade")
    assert audit_texts(app, "body") == [None]
    # Downgrading brings the column back, not what it held.
    succeeds(app, "downgrade", "0002")
    assert audit_texts(app, "text") == [None]

    # The revision as it should be: one column, renamed. In batch mode, as
    # autogenerate writes it, so that it runs on SQLite too.
    edit_function(
        revision,
        "upgrade_audit",
        """
        with op.batch_alter_table("audit_log") as batch_op:
            batch_op.alter_column("text", new_column_name="body")
        """,
    )
    edit_function(
        revision,
        "downgrade_audit",
        """
        with op.batch_alter_table("audit_log") as batch_op:
            batch_op.alter_column("body", new_column_name="text")
        """,
    )
    assert client.post("/messages", json={"text": "after"}).status_code == 201
    succeeds(app, "upgrade")

    assert audit_texts(app, "body") == [None, "after"]
    # And the models and the database agree.
    succeeds(app, "check")


def tags_made(apps, new_database, tmp_path, naming_convention):
    """Return step 11's app, its databases given the tags table by the
    revision autogenerate writes with the naming convention, and the copy
    of its migrations."""
    databases = databases_of_its_own(new_database, "step11")
    app, folder = upgraded_step11_app(apps, databases, tmp_path)
    app.extensions["migrate"].metadata = step11_metadata(
        "added table", naming_convention
    )
    migrate_writes(app, folder)
    succeeds(app, "upgrade")
    return app, folder


def autogenerate_on_step11(app, folder, change, naming_convention):
    """Return the operations of the revision step 11's flask db migrate
    writes for models with the change and the naming convention."""
    app.extensions["migrate"].metadata = step11_metadata(change, naming_convention)
    written = migrate_writes(app, folder)
    return operations(written) if written else None


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_sqlite_a_foreign_key_without_a_name_cannot_be_dropped(
    apps, new_database, tmp_path
):
    app, folder = tags_made(apps, new_database, tmp_path, naming_convention=None)
    # SQLite keeps no name for a constraint the CREATE TABLE did not name:
    # autogenerate finds the foreign key gone, and can only say None.
    with pytest.warns(UserWarning, match="unnamed constraint on table 'tags'"):
        written = autogenerate_on_step11(
            app, folder, "tags lose their foreign key", naming_convention=None
        )
    assert written["upgrade_messages"] == [
        "with op.batch_alter_table('tags', schema=None) as batch_op:\n"
        "    batch_op.drop_constraint(None, type_='foreignkey')"
    ]

    result = flask_db(app, "upgrade")

    assert result.exit_code == 1
    assert repr(result.exception) == "ValueError('Constraint must have a name')"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_sqlite_the_naming_conventions_foreign_key_is_dropped_in_batch_mode(
    apps, new_database, tmp_path
):
    app, folder = tags_made(apps, new_database, tmp_path, NAMING_CONVENTION)
    written = autogenerate_on_step11(
        app, folder, "tags lose their foreign key", NAMING_CONVENTION
    )
    # The name the convention gave it when the table was made: batch mode
    # copies the table without it.
    assert written["upgrade_messages"] == [
        "with op.batch_alter_table('tags', schema=None) as batch_op:\n"
        "    batch_op.drop_constraint(batch_op.f('fk_tags_message_id_messages'),"
        " type_='foreignkey')"
    ]

    succeeds(app, "upgrade")

    engine = create_engine(app.config["DATABASE_URL"], poolclass=NullPool)
    assert inspect(engine).get_foreign_keys("tags") == []
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_sqlite_a_unique_constraint_without_a_name_is_not_even_seen(
    apps, new_database, tmp_path
):
    app, folder = tags_made(apps, new_database, tmp_path, naming_convention=None)
    written = autogenerate_on_step11(
        app, folder, "tag names not unique", naming_convention=None
    )
    # Autogenerate compares unique constraints by name: one without a name
    # is not in the comparison, and is never dropped. No revision is written.
    assert written is None
    succeeds(app, "upgrade")
    succeeds(app, "check")

    url = app.config["DATABASE_URL"]
    sql(url, "INSERT INTO messages (text) VALUES ('tagged')")
    sql(url, "INSERT INTO tags (message_id, name) VALUES (1, 'same')")
    with pytest.raises(IntegrityError, match="UNIQUE constraint failed: tags.name"):
        sql(url, "INSERT INTO tags (message_id, name) VALUES (1, 'same')")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_table_the_app_does_not_own_is_dropped_by_flask_migrate_only(
    apps, starting_point, tmp_path
):
    # Another program's table, in each app's messages database.
    for databases in starting_point.values():
        sql(databases["DATABASE_URL"], "CREATE TABLE reports (id INTEGER PRIMARY KEY)")

    written = autogenerate(apps, starting_point, tmp_path)

    assert "op.drop_table('reports')" in written["flask_migrate"]["upgrade_messages"]
    # Step 11's include_object: a table its models do not declare is not
    # its to drop, and with nothing else changed, no revision is written.
    assert written["step11"] is None
