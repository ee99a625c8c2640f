"""Step 5: the schema belongs to the database; the app maps what it finds.

SQLAlchemy's documentation, "Reflecting Database Objects" and "Mapping
Declaratively with Reflected Tables" (DeferredReflection, automap). The
failing variant of each concept runs on step 4, whose model declares its
columns and whose init-db calls create_all. From step 11 on, the models
declare the schema again and migrations give it to the databases: what the
app checks at startup, and what init-db names, stay; what reflection maps
goes.
"""

import os
import subprocess
import sys

import pytest
from sqlalchemy import MetaData
from sqlalchemy import Table
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.automap import automap_base

from testbed import ROOT
from testbed.fork import in_forked_child
from testbed.gunicorn import Gunicorn
from testbed.step_apps import dispose_engines

from .conftest import ALL_BACKENDS
from .steps import STEPS_WITH_MIGRATIONS
from .steps import STEPS_WITH_REFLECTED_MODELS
from .steps import import_step
from .steps import pool_status
from .steps import served
from .steps import steps_from
from .workers import worker_answers

# The steps that connect at startup to see the tables, and answer 503
# naming init-db until they are there.
STEPS_WITH_REFLECTION = steps_from("step05_reflection")
ADD_AUTHOR = "ALTER TABLE messages ADD COLUMN author VARCHAR(40) DEFAULT 'anonymous'"


@pytest.fixture(params=STEPS_WITH_REFLECTION)
def step(request):
    """Name each step that maps its models from the database."""
    return request.param


def add_author_column(app):
    """Add a column to the messages table from outside the app."""
    # Another program's connection: the team's schema tool, say.
    engine = create_engine(app.config["DATABASE_URL"])
    with engine.begin() as connection:
        connection.execute(text(ADD_AUTHOR))
    engine.dispose()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    ("step", "shown_after_restart"),
    [
        ("step04_pooling", False),
        *((step, True) for step in STEPS_WITH_REFLECTED_MODELS),
        # The models declare the columns: a column needs a migration.
        *((step, False) for step in STEPS_WITH_MIGRATIONS),
    ],
)
def test_a_column_added_outside_the_app_shows_up_after_a_restart(
    step, shown_after_restart, make_app
):
    running = make_app(step).test_client()
    running.post("/messages", json={"text": "before"})

    add_author_column(running.application)

    # The running app keeps its mapping, and keeps working.
    assert running.post("/messages", json={"text": "after"}).status_code == 201
    assert [set(m) for m in running.get("/messages").get_json()] == [
        {"id", "text", "created_at"}
    ] * 2
    # A restart creates the app anew: step 5 maps the table as it is now.
    restarted = make_app(step).test_client()
    assert restarted.post("/messages", json={"text": "restarted"}).status_code == 201
    messages = restarted.get("/messages").get_json()
    if shown_after_restart:
        assert [m["author"] for m in messages] == ["anonymous"] * 3
        assert "<code>author</code>" in restarted.get("/").get_data(as_text=True)
    else:
        assert all("author" not in m for m in messages)


REQUESTS = [
    ("get", "/messages", None),
    ("post", "/messages", {"text": "too soon"}),
    ("get", "/messages/1", None),
    ("patch", "/messages/1", {"text": "too soon"}),
    ("delete", "/messages/1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
def test_before_init_db_the_app_starts_and_its_api_names_init_db(
    step, database_url, method, path, body
):
    app = import_step(step).create_app({"DATABASE_URL": database_url})
    client = app.test_client()

    response = getattr(client, method)(path, json=body)

    assert response.status_code == 503
    assert response.get_json() == {
        "error": "the database has no table messages yet:"
        f" create it with flask --app {step} init-db"
    }
    page = client.get("/")
    assert page.status_code == 503
    assert f"flask --app {step} init-db" in page.get_data(as_text=True)
    assert pool_status(client)["checked_out"] == 0
    dispose_engines(app)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_before_init_db_step_4_answers_the_databases_own_error(database_url):
    client = (
        import_step("step04_pooling")
        .create_app({"DATABASE_URL": database_url})
        .test_client()
    )

    response = client.get("/messages")

    assert response.status_code == 503
    error = response.get_json()["error"]
    assert "init-db" not in error
    # SQLite's, PostgreSQL's and MariaDB's words for it.
    assert any(
        words in error for words in ("no such table", "does not exist", "doesn't exist")
    )
    dispose_engines(client.application)


def test_once_init_db_has_run_the_same_app_serves_without_a_restart(step, database_url):
    app = import_step(step).create_app({"DATABASE_URL": database_url})
    client = app.test_client()
    assert client.get("/messages").status_code == 503

    # init-db from another process, as a person would run it.
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", step, "init-db"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
        capture_output=True,
        timeout=60,
    )

    assert client.post("/messages", json={"text": "now"}).status_code == 201
    assert [m["text"] for m in client.get("/messages").get_json()] == ["now"]
    dispose_engines(app)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    ("step", "server_fills_created_at"),
    [("step04_pooling", False), *((step, True) for step in STEPS_WITH_REFLECTION)],
)
def test_init_db_applies_the_schema_file_so_the_database_owns_the_defaults(
    step, server_fills_created_at, database_url
):
    app = import_step(step).create_app({"DATABASE_URL": database_url})
    engine = app.extensions["engine"]

    app.test_cli_runner().invoke(args=["init-db"])

    with engine.begin() as connection:
        # Another program's insert, which knows nothing of the app's model.
        insert = text("INSERT INTO messages (text) VALUES ('from elsewhere')")
        if server_fills_created_at:
            connection.execute(insert)
            created_at = connection.execute(text("SELECT created_at FROM messages"))
            assert created_at.scalar_one() is not None
        else:
            # create_all wrote the model's table: the default lives in Python.
            # (MariaDB's error 1364, "Field 'created_at' doesn't have a
            # default value", reaches SQLAlchemy as an OperationalError.)
            with pytest.raises(DBAPIError, match="created_at"):
                connection.execute(insert)
    engine.dispose()


@pytest.mark.parametrize(
    ("step", "opened_at_startup"),
    [("step04_pooling", 0), *((step, 1) for step in served(STEPS_WITH_REFLECTION))],
)
def test_creating_the_app_connects_to_map_the_models(step, opened_at_startup, make_app):
    client = make_app(step).test_client()

    status = pool_status(client)

    # Before any request: reflection's connection, back in the pool.
    assert status["connects"] == status["checked_in"] == opened_at_startup


def test_the_models_are_mapped_once_per_app_not_on_each_request(step, make_app):
    app = make_app(step)
    client = app.test_client()
    assert client.get("/messages").status_code == 200
    checkouts = []
    event.listen(
        app.extensions["engine"].pool, "checkout", lambda *args: checkouts.append(1)
    )

    for _ in range(5):
        assert client.get("/messages").status_code == 200

    # One checkout a request, for its query: none to reflect the tables again.
    assert len(checkouts) == 5


@pytest.mark.parametrize(("pool_owner", "opened_in_the_child"), [(True, 1), (False, 0)])
def test_a_forked_child_leaves_reflections_connection_to_the_parent(
    step, make_app, pool_owner, opened_in_the_child
):
    client = make_app(step).test_client()

    def serve_in_child():
        if not pool_owner:
            # As if step 4's PoolOwner were not there: the child passes
            # for the process the pools belong to.
            client.application.extensions["pool_owner"].pid = os.getpid()
        assert client.get("/messages").status_code == 200
        return pool_status(client)["connects_in_this_process"]

    # Without the PoolOwner, the child serves on the very connection the
    # parent holds in its pool: two processes, one socket.
    assert in_forked_child(serve_in_child) == opened_in_the_child
    assert client.get("/messages").status_code == 200
    assert pool_status(client)["connects"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("step", "inherited"),
    [("step04_pooling", 0), *((step, 1) for step in served(STEPS_WITH_REFLECTION))],
)
def test_gunicorn_preload_maps_the_models_in_the_master_before_fork(
    step, inherited, make_app, databases_for
):
    make_app(step)
    # The bare app factory: no query at startup but reflection's.
    with Gunicorn(
        f"{step}:create_app()", ["--preload", "--workers", "2"], databases_for(step)
    ) as gunicorn:
        workers = worker_answers(gunicorn, served=True)

    assert len(workers) == 2
    for worker in workers.values():
        # The master's reflection connection is counted in every worker's
        # copy; step 4's PoolOwner keeps each worker off it: a worker
        # serves on the one connection it opened itself.
        assert worker["connects"] == inherited + 1
        assert worker["connects_in_this_process"] == 1
        assert worker["checked_in"] == 1


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("step", STEPS_WITH_REFLECTED_MODELS)
def test_automap_and_a_reflected_table_see_the_same_columns(step, make_app):
    app = make_app(step)
    add_author_column(app)
    engine = app.extensions["engine"]
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE notes (body VARCHAR(40))"))
    deferred = make_app(step).extensions["models"].get().Message

    automapped = automap_base()
    automapped.prepare(autoload_with=engine)
    table = Table("messages", MetaData(), autoload_with=engine)

    columns = ["id", "text", "created_at", "author"]
    assert deferred.__table__.columns.keys() == columns
    # automap names the class after the table, and maps no table without
    # a primary key.
    assert automapped.classes.messages.__table__.columns.keys() == columns
    assert "notes" not in automapped.classes
    # Core alone: a Table, no class, no Session needed.
    assert table.columns.keys() == columns
