"""Step 11: the models declare the schema, and Alembic's migrations give it.

Alembic's documentation ("Working with multiple databases", "Auto
Generating Migrations", "Running Batch Migrations for SQLite") and
Flask-Migrate 4.1's commands. The failing variant of each concept is
Alembic as its templates set it up (an alembic.ini, fileConfig(), its
defaults), or step 10, whose schema files no command can change.
Autogenerate against Flask-Migrate: tests/test_step11_autogenerate.py; a
migration under load and behind a lock: tests/test_step11_under_load.py.
"""

import logging
import logging.config
import shutil
import textwrap

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import Result
from flask_migrate.cli import db as flask_migrates_db
from sqlalchemy import Column
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import inspect
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from step11_migrations import create_app
from step11_migrations import migrate
from step11_migrations.models import declare_models
from step11_migrations.models import metadata_of
from step11_migrations.testing import IsolationError
from step11_migrations.testing import isolated
from testbed.fork import in_forked_child
from testbed.step_apps import close_app
from testbed.step_apps import initialize_databases

from .conftest import ALL_BACKENDS
from .steps import import_step

STEP = "step11_migrations"
DATABASES = {"messages": "DATABASE_URL", "audit": "AUDIT_DATABASE_URL"}
APP_TABLES = {"messages": ["messages"], "audit": ["audit_log"]}
REVISIONS = ["0001", "0002"]


@pytest.fixture
def databases(databases_for):
    """Return the step's two empty databases on the test's backend."""
    return databases_for(STEP)


@pytest.fixture
def step_app(databases):
    """Return a factory of the step's apps on the test's databases, closed
    after the test."""
    apps = []

    def make(**config):
        apps.append(create_app({"TESTING": True, **databases, **config}))
        return apps[-1]

    yield make
    for app in apps:
        close_app(app)


@pytest.fixture
def app(step_app):
    """Return the step's app on empty databases: no table, no version."""
    return step_app()


def flask_db(app, *args):
    """Run ``flask db ...`` on the app, as a person would; return its result."""
    result: Result = app.test_cli_runner().invoke(args=["db", *args])
    return result


def tables(url):
    """Name the tables a database has, but Alembic's version table."""
    engine = create_engine(url, poolclass=NullPool)
    names = sorted(set(inspect(engine).get_table_names()) - {"alembic_version"})
    engine.dispose()
    return names


def versions(app):
    """Return each database's revision, as its version table says."""
    found = {}
    for database, engine in app.extensions["engines"].items():
        with engine.connect() as connection:
            found[database] = MigrationContext.configure(
                connection
            ).get_current_revision()
    return found


def differences(app):
    """Return what Alembic's compare_metadata finds between each database
    and its models."""
    found = {}
    for database, metadata in metadata_of(declare_models()).items():
        with app.extensions["engines"][database].connect() as connection:
            context = MigrationContext.configure(connection)
            found[database] = compare_metadata(context, metadata)
    return found


def copy_of_the_migrations(tmp_path):
    """Copy the step's migrations folder, for revisions of a test's own."""
    folder = tmp_path / "migrations"
    shutil.copytree(
        migrate.MIGRATIONS_FOLDER, folder, ignore=shutil.ignore_patterns("__pycache__")
    )
    return folder


def write_revision(folder, revision, down_revision, messages="pass", audit="pass"):
    """Write a revision by hand: what each database's upgrade runs; its
    downgrade drops the table ``notes`` if there is one."""
    body = f'''
        """A revision of the test's own."""

        import sqlalchemy as sa
        from alembic import op

        revision = "{revision}"
        down_revision = "{down_revision}"
        branch_labels = None
        depends_on = None


        def upgrade(engine_name):
            globals()[f"upgrade_{{engine_name}}"]()


        def downgrade(engine_name):
            op.execute("DROP TABLE IF EXISTS notes")


        def upgrade_messages():
            {messages}


        def upgrade_audit():
            {audit}
    '''
    path = folder / "versions" / f"{revision}_by_the_test.py"
    path.write_text(textwrap.dedent(body))


# 1. A round trip, on every backend.


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_upgrading_empty_databases_gives_the_schema_the_models_describe(app, databases):
    upgraded = flask_db(app, "upgrade")

    assert upgraded.exit_code == 0, upgraded.output
    assert versions(app) == {"messages": "0002", "audit": "0002"}
    for database, key in DATABASES.items():
        assert tables(databases[key]) == APP_TABLES[database]
    # Alembic's own comparison of the databases with the models finds
    # nothing, and so does flask db check.
    assert differences(app) == {"messages": [], "audit": []}
    checked = flask_db(app, "check")
    assert checked.exit_code == 0, checked.output
    assert "No new upgrade operations detected." in checked.output


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_downgrading_to_base_leaves_none_of_the_apps_tables(app, databases):
    flask_db(app, "upgrade")

    downgraded = flask_db(app, "downgrade", "base")

    assert downgraded.exit_code == 0, downgraded.output
    assert versions(app) == {"messages": None, "audit": None}
    assert tables(databases["DATABASE_URL"]) == []
    assert tables(databases["AUDIT_DATABASE_URL"]) == []


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_revision_upgrades_downgrades_and_upgrades_again(app):
    script = ScriptDirectory.from_config(with_app_context(app, migrate.alembic_config))
    assert [head for head in script.get_heads()] == [REVISIONS[-1]]
    chain = [revision.revision for revision in script.walk_revisions("base", "heads")]
    assert chain[::-1] == REVISIONS

    for revision, before in zip(REVISIONS, [None, *REVISIONS], strict=False):
        for target, expected in [
            (revision, revision),
            (before or "base", before),
            (revision, revision),
        ]:
            moved = flask_db(
                app, "upgrade" if target == revision else "downgrade", target
            )
            assert moved.exit_code == 0, moved.output
            assert versions(app) == {"messages": expected, "audit": expected}
    assert differences(app) == {"messages": [], "audit": []}


def with_app_context(app, function):
    """Call ``function`` in an app context of the app."""
    with app.app_context():
        return function()


def test_flask_db_has_flask_migrates_commands_with_their_names():
    ours = set(create_app().cli.commands["db"].commands)
    # Flask-Migrate's own group, which its init_app registers as flask db.
    theirs = set(flask_migrates_db.commands)

    assert ours == {
        "migrate",
        "revision",
        "upgrade",
        "downgrade",
        "current",
        "history",
        "stamp",
        "check",
    }
    assert ours <= theirs


def test_current_history_and_stamp_answer_as_flask_migrates_do(app):
    flask_db(app, "upgrade", "0001")

    current = flask_db(app, "current")
    history = flask_db(app, "history")
    stamped = flask_db(app, "stamp", "head")

    # One line per database: both are at 0001.
    assert current.stdout.splitlines() == ["0001", "0001"]
    assert history.stdout.splitlines() == [
        "0001 -> 0002 (head), Index audit_log by message_id: a message's history"
        " without a full scan.",
        "<base> -> 0001, Create messages, and audit_log in the audit database.",
    ]
    assert stamped.exit_code == 0
    assert versions(app) == {"messages": "0002", "audit": "0002"}
    # Stamped, not run: the index 0002 creates is not there.
    assert [d[0] for d in differences(app)["audit"]] == ["add_index"]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_flask_db_check_fails_while_the_models_and_the_migrations_differ(app):
    flask_db(app, "upgrade")
    # Models with one more column than the migrations give.
    metadata = MetaData()
    for table in metadata_of(declare_models())["messages"].tables.values():
        table.to_metadata(metadata)
    metadata.tables["messages"].append_column(Column("author", String(40)))
    app.extensions["migrate"].metadata["messages"] = metadata

    checked = flask_db(app, "check")

    assert checked.exit_code == 1
    assert "New upgrade operations detected: [('add_column'" in checked.output
    assert "'author'" in checked.output


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_database_made_by_step_10s_schema_files_ports_with_stamp_and_upgrade(
    databases, app
):
    # Step 10's init-db: its schema files, no version table.
    initialize_databases(import_step("step10_helpers").create_app, databases)

    stamped = flask_db(app, "stamp", "0001")
    upgraded = flask_db(app, "upgrade")

    # Its tables are the first revision's, so 0001 is where they stand:
    # 0002 adds the index step 10 had not, and then nothing differs.
    assert stamped.exit_code == upgraded.exit_code == 0, upgraded.output
    assert differences(app) == {"messages": [], "audit": []}


def test_init_db_is_flask_db_upgrade_to_the_head(app):
    result = app.test_cli_runner().invoke(args=["init-db"])

    assert result.output == "Initialized the database.\n"
    assert versions(app) == {"messages": "0002", "audit": "0002"}
    assert app.test_client().post("/messages", json={"text": "hi"}).status_code == 201


# 2. DDL that fails halfway.

# A revision of two statements whose second fails: the column is there.
CREATE_NOTES = 'op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))'
ADD_TEXT_AGAIN = 'op.add_column("messages", sa.Column("text", sa.String(10)))'
CREATE_NOTES_THEN_FAIL = f"{CREATE_NOTES}\n            {ADD_TEXT_AGAIN}"


def app_with_a_third_revision(tmp_path, step_app, messages, **config):
    """Return the step's app at 0002, with a revision 0003 of the test's
    own that runs ``messages`` on the messages database."""
    folder = copy_of_the_migrations(tmp_path)
    write_revision(folder, "0003", "0002", messages=messages)
    app = step_app(MIGRATIONS_FOLDER=str(folder), **config)
    assert flask_db(app, "upgrade", "0002").exit_code == 0
    return app


def failing_revision_app(tmp_path, step_app):
    """Return the step's app at 0002, with a third revision that fails
    halfway: it creates ``notes``, then adds a column that exists."""
    return app_with_a_third_revision(tmp_path, step_app, CREATE_NOTES_THEN_FAIL)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_on_sqlite_and_postgresql_a_revision_that_fails_rolls_back_whole(
    tmp_path, databases, step_app
):
    app = failing_revision_app(tmp_path, step_app)

    failed = flask_db(app, "upgrade")

    assert failed.exit_code == 1
    # Neither the table its first statement created, nor a new version.
    assert tables(databases["DATABASE_URL"]) == ["messages"]
    assert versions(app)["messages"] == "0002"


def alembic_as_its_template_sets_it_up(tmp_path, url, revisions):
    """Return an Alembic Config as ``alembic init`` writes it (its generic
    template: alembic.ini, env.py) on one database, with these revisions."""
    folder = tmp_path / "plain"
    ini = tmp_path / "alembic.ini"
    command.init(Config(str(ini)), str(folder), template="generic")
    for revision in revisions.glob("*.py"):
        shutil.copy(revision, folder / "versions")
    # The generic env.py runs each revision's upgrade() with no argument:
    # these revisions are per database, so it names the database.
    env = (folder / "env.py").read_text()
    (folder / "env.py").write_text(
        env.replace(
            "context.run_migrations()", 'context.run_migrations(engine_name="messages")'
        )
    )
    config = Config(str(ini))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade_in_a_child(config, revision):
    """Run Alembic's upgrade in a forked child; return its error, if any.

    In a child: the generic env.py calls logging.config.fileConfig(), which
    would disable this process's loggers for the rest of the run.
    """

    def upgrade():
        try:
            command.upgrade(config, revision)
        except Exception as error:
            return str(error)
        return None

    return in_forked_child(upgrade)


@pytest.mark.parametrize(
    ("backend", "error", "left"),
    [
        ("sqlite", "duplicate column name: text", ["messages", "notes"]),
        (
            "postgresql",
            'column "text" of relation "messages" already exists',
            ["messages"],
        ),
    ],
)
def test_with_alembics_own_settings_a_failed_revision_stays_half_applied_on_sqlite(
    tmp_path, databases, step_app, error, left
):
    # SQLite's Python driver begins no transaction before DDL, and Alembic
    # assumes none on SQLite: each statement commits as it runs. PostgreSQL
    # rolls the revision back whole, with Alembic's defaults too.
    app = failing_revision_app(tmp_path, step_app)
    config = alembic_as_its_template_sets_it_up(
        tmp_path, databases["DATABASE_URL"], tmp_path / "migrations" / "versions"
    )

    assert error in upgrade_in_a_child(config, "0003")

    assert tables(databases["DATABASE_URL"]) == left
    assert versions(app)["messages"] == "0002"


@pytest.mark.parametrize("backend", ["mariadb"])
def test_on_mariadb_a_failed_revision_stays_half_applied_and_the_next_upgrade_fails(
    tmp_path, databases, step_app
):
    app = failing_revision_app(tmp_path, step_app)

    failed = flask_db(app, "upgrade")
    again = flask_db(app, "upgrade")

    # MariaDB commits before and after each CREATE, ALTER and DROP: the
    # first statement stays, the version does not move, and the revision
    # cannot run again.
    assert failed.exit_code == again.exit_code == 1
    assert "Duplicate column name 'text'" in failed.output
    assert tables(databases["DATABASE_URL"]) == ["messages", "notes"]
    assert versions(app)["messages"] == "0002"
    assert "Table 'notes' already exists" in again.output


@pytest.mark.parametrize("backend", ["mariadb"])
def test_on_mariadb_one_statement_per_revision_leaves_nothing_half_applied(
    tmp_path, databases, step_app
):
    # The step's rule on MariaDB: the same change as two revisions of one
    # statement each. Each revision is committed with its version
    # (transaction_per_migration): the one that worked is recorded.
    folder = copy_of_the_migrations(tmp_path)
    write_revision(folder, "0003", "0002", messages=CREATE_NOTES)
    write_revision(folder, "0004", "0003", messages=ADD_TEXT_AGAIN)
    app = step_app(MIGRATIONS_FOLDER=str(folder))

    failed = flask_db(app, "upgrade")
    assert failed.exit_code == 1
    assert versions(app)["messages"] == "0003"
    # The failed revision, fixed, runs on from where the database stands.
    write_revision(
        folder,
        "0004",
        "0003",
        messages='op.add_column("messages", sa.Column("body", sa.String(10)))',
    )
    fixed = flask_db(app, "upgrade")

    assert fixed.exit_code == 0, fixed.output
    assert versions(app) == {"messages": "0004", "audit": "0004"}


# The statements that MariaDB commits by itself.
DDL = ("CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE")


@pytest.mark.parametrize("backend", ["mariadb"])
def test_each_of_the_steps_revisions_runs_at_most_one_ddl_statement_per_database(
    app,
):
    statements = []

    def record(connection, cursor, statement, *args):
        statements.append(statement.strip())

    for engine in app.extensions["engines"].values():
        event.listen(engine, "before_cursor_execute", record)

    assert flask_db(app, "upgrade").exit_code == 0

    # Each revision ends by writing its version (an INSERT into Alembic's
    # version table, then UPDATEs): count the app's DDL in between.
    per_revision, count = [], 0
    for statement in statements:
        verb = statement.split(None, 1)[0].upper()
        if "alembic_version" in statement:
            if verb in ("INSERT", "UPDATE"):
                per_revision.append(count)
                count = 0
        elif verb in DDL:
            count += 1
    # Revision 0001 creates a table in each database; 0002 only an index in
    # the audit database.
    assert per_revision == [1, 0, 1, 1]


# 3. Step 7's isolated(app): a migration inside the block.


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_isolated_rolls_back_a_migration_run_inside_the_block(
    tmp_path, databases, step_app
):
    app = app_with_a_third_revision(tmp_path, step_app, CREATE_NOTES)

    with isolated(app):
        upgraded = flask_db(app, "upgrade")
        # Inside the block, the migration ran on the connection it holds.
        assert upgraded.exit_code == 0, upgraded.output
        assert versions_through_the_session(app) == "0003"

    # Transactional DDL: the table and the version went with the block.
    assert tables(databases["DATABASE_URL"]) == ["messages"]
    assert versions(app) == {"messages": "0002", "audit": "0002"}


def versions_through_the_session(app):
    """Return the messages database's revision as the app's Session sees it."""
    with app.app_context():
        session = app.extensions["session"]()
        return session.execute(text("SELECT version_num FROM alembic_version")).scalar()


@pytest.mark.parametrize("backend", ["mariadb"])
def test_on_mariadb_isolated_says_it_cannot_roll_a_migration_back(
    tmp_path, databases, step_app
):
    app = app_with_a_third_revision(tmp_path, step_app, CREATE_NOTES)

    with (
        pytest.raises(
            IsolationError, match="commit by themselves before and after DDL"
        ),
        isolated(app),
    ):
        flask_db(app, "upgrade")

    # Step 7's rule: the DDL committed, and the block says so rather than
    # pretend it rolled back.
    assert tables(databases["DATABASE_URL"]) == ["messages", "notes"]


# 4. What Alembic's templates get wrong for an app: logging, and the URL.


def logged_after(app, migration):
    """Run the migration in a forked child, then log from the app; return
    what the app's logger passed on. In a child: fileConfig() would change
    this process's logging for the rest of the run."""

    def migrate_then_log():
        records = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        app.logger.addHandler(handler)
        migration()
        app.logger.warning("after the migration")
        return records

    return in_forked_child(migrate_then_log)


def test_the_apps_loggers_still_log_after_a_migration_in_the_same_process(app):
    def flask_db_upgrade():
        assert flask_db(app, "upgrade").exit_code == 0

    assert logged_after(app, flask_db_upgrade) == ["after the migration"]


def test_alembics_generic_env_disables_the_apps_loggers(tmp_path, databases, app):
    # Flask-Migrate #364: env.py's fileConfig(), with its default
    # disable_existing_loggers=True, turns off every logger that exists and
    # that alembic.ini does not name, the app's among them.
    config = alembic_as_its_template_sets_it_up(
        tmp_path, databases["DATABASE_URL"], migrate.MIGRATIONS_FOLDER / "versions"
    )

    def alembic_upgrade():
        command.upgrade(config, "0001")

    assert logged_after(app, alembic_upgrade) == []


PASSWORD = "p%40ss%word"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_percent_sign_in_the_password_needs_no_escaping(postgres, databases):
    # A role whose password has % in it: the URL spells each as %25.
    admin = postgres.admin_engine()
    with admin.connect() as connection:
        connection.execute(text("DROP ROLE IF EXISTS percent_user"))
        connection.execute(
            text(f"CREATE ROLE percent_user LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        )
    url = (
        make_url(databases["DATABASE_URL"])
        .set(username="percent_user", password=PASSWORD)
        .render_as_string(hide_password=False)
    )
    assert "%25" in url
    app = create_app({**databases, "DATABASE_URL": url})

    upgraded = flask_db(app, "upgrade")

    assert upgraded.exit_code == 0, upgraded.output
    assert versions(app)["messages"] == "0002"
    close_app(app)
    # What an env.py that copies the URL into Alembic's Config meets
    # (alembic #1279): the ini file's interpolation reads % as its own.
    with pytest.raises(ValueError, match="invalid interpolation syntax"):
        Config().set_main_option("sqlalchemy.url", url)


# 5. The source of truth: declared models, and reflection's other flow.

ADD_AUTHOR = 'op.add_column("messages", sa.Column("author", sa.String(40)))'


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reflected_models_map_a_hand_written_migration_but_check_cannot_see_drift(
    tmp_path, databases, step_app
):
    folder = copy_of_the_migrations(tmp_path)
    write_revision(folder, "0003", "0002", messages=ADD_AUTHOR)
    app = step_app(MIGRATIONS_FOLDER=str(folder))

    # Step 5's flow: the migration is written by hand, and an app that
    # reflects its models (step 10's) maps what it made.
    assert flask_db(app, "upgrade").exit_code == 0
    reflecting = import_step("step10_helpers").create_app(databases)
    client = reflecting.test_client()
    assert client.post("/messages", json={"text": "hi"}).get_json()["author"] is None
    close_app(reflecting)

    # Autogenerate compares the database with the models. The declared
    # ones lack the column: flask db check sees the drift. Models reflected
    # from the database compare it with itself, and find nothing
    # (Flask-Migrate #304).
    declared = flask_db(app, "check")
    reflected = MetaData()
    reflected.reflect(app.extensions["engine"], only=["messages"])
    app.extensions["migrate"].metadata["messages"] = reflected
    reflected_check = flask_db(app, "check")

    assert declared.exit_code == 1
    assert "('remove_column', None, 'messages', Column('author'" in declared.output
    assert reflected_check.exit_code == 0


# 6. A migration waits for a lock at most MIGRATION_LOCK_TIMEOUT seconds.


@pytest.mark.parametrize(
    ("backend", "error"),
    [
        ("postgresql", "canceling statement due to lock timeout"),
        ("mariadb", "Lock wait timeout exceeded"),
    ],
)
def test_a_migration_behind_a_long_transaction_gives_up_after_the_lock_timeout(
    tmp_path, databases, step_app, error
):
    app = app_with_a_third_revision(
        tmp_path, step_app, ADD_AUTHOR, MIGRATION_LOCK_TIMEOUT=1
    )
    # Another program's transaction, which read the table and is still open.
    reader = create_engine(databases["DATABASE_URL"], poolclass=NullPool)

    with reader.connect() as connection:
        connection.execute(text("SELECT count(*) FROM messages"))
        upgraded = flask_db(app, "upgrade")
        connection.rollback()
    reader.dispose()

    assert upgraded.exit_code == 1
    assert error in upgraded.output
    assert versions(app)["messages"] == "0002"
    # Once the transaction ended, the same migration runs.
    assert flask_db(app, "upgrade").exit_code == 0
