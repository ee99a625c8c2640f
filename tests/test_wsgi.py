"""Each step's ``wsgi.py`` under ``gunicorn --preload``: the fork demo.

The module checks the database as it loads, so gunicorn's master holds a
pooled connection when it forks its workers. Step 3's workers serve on that
inherited connection and open none of their own; step 4's each open theirs.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.engine import make_url

from testbed.gunicorn import Gunicorn
from testbed.step_apps import databases_in
from testbed.step_apps import initialize_databases

from .steps import import_step
from .steps import served
from .steps import steps_from
from .workers import worker_answers

# Each test starts gunicorn with several workers.
pytestmark = pytest.mark.slow


# Every step on PostgreSQL, where a shared connection is a shared socket;
# on SQLite, step 4, whose concept this is, and step 3 before it.
PRELOAD_RUNS = [
    ("step03_teardown", "sqlite", 0),
    ("step04_pooling", "sqlite", 1),
    ("step03_teardown", "postgresql", 0),
    *((step, "postgresql", 1) for step in served(steps_from("step04_pooling"))),
]


@pytest.mark.parametrize(("step", "backend", "connections_of_its_own"), PRELOAD_RUNS)
def test_preloaded_workers_open_connections_of_their_own_from_step_4_on(
    step, connections_of_its_own, database_url, backend, request
):
    env = {**os.environ, "DATABASE_URL": database_url}
    initialize_databases(import_step(step).create_app, databases_in(env))
    with Gunicorn(f"{step}.wsgi:app", ["--preload", "--workers", "2"], env) as gunicorn:
        # The first worker may answer before the second is ready to serve.
        assert len(worker_answers(gunicorn)) == 2
        # Step 3's workers share the master's socket, and two requests at
        # once on it would corrupt its traffic (that is the bug), so step 3
        # gets one request at a time; step 4's, several, so both work.
        at_once = 1 if connections_of_its_own == 0 else 4
        with ThreadPoolExecutor(max_workers=at_once) as executor:
            statuses = list(executor.map(get_messages, [gunicorn.url] * 40))
        assert statuses == [200] * 40
        workers = worker_answers(gunicorn)
        if backend == "postgresql":
            server_connections = count_connections(request, database_url)

    for worker in workers.values():
        # The master's connection is counted in every worker's copy.
        assert worker["connects"] == 1 + connections_of_its_own
        assert worker["connects_in_this_process"] == connections_of_its_own
    if backend == "postgresql" and connections_of_its_own == 0:
        # Every worker served on the master's one connection.
        assert server_connections == 1
    elif backend == "postgresql":
        # The master's, and one of each worker that served.
        assert server_connections >= 1 + len(workers)


def get_messages(url):
    """Send GET /messages; return the status."""
    return requests.get(url + "/messages", timeout=30).status_code


def count_connections(request, database_url):
    """Count the connections the server has to the test's database."""
    server = request.getfixturevalue("postgres")
    engine = server.admin_engine()
    with engine.connect() as connection:
        count = connection.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
            {"name": make_url(database_url).database},
        ).scalar_one()
    engine.dispose()
    return count
