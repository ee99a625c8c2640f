"""What it costs to give each test a clean database, three ways, on both backends.

    python -m bench.per_test            # into bench/results/per_test.*
    python -m bench.per_test --quick    # a few rounds, into bench/quick-results/

Each case runs the same small test against step 7's app, a write and a
read through the API, many times over, the cases taking turns round by
round (bench/timing.py). The test asserts that it found the database empty,
so every case proves it cleaned up after the test before.

- ``isolated(app)``: one app for the run; each test inside isolated(), which
  rolls everything back.
- a fresh database per test: two new databases (SQLite files, or
  PostgreSQL's CREATE DATABASE), init-db, a new app, and both dropped after.
- deleting the rows: one app for the run; each test's rows deleted after
  it, in both databases, with DELETE statements that commit.
"""

import contextlib
import logging
import os
import pathlib
import tempfile
import uuid

from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from step07_testing import create_app
from step07_testing.testing import isolated
from testbed.loopback import free_port
from testbed.postgres import Cluster
from testbed.postgres import find_binaries
from testbed.step_apps import dispose_engines

from .command_line import QUICK_NOTE
from .command_line import run_part
from .command_line import write_outputs
from .timing import CallAsClient
from .timing import time_per_request

BASELINE = "isolated(app)"


def run_one_test(client):
    """Write a message and read the list: a test that needs an empty database."""
    created = client.post("/messages", json={"text": "a test's write"})
    assert created.status_code == 201, created.get_json()
    assert client.get("/messages").get_json() == [created.get_json()]


class FreshDatabases:
    """New, empty databases, each beside one that the run already has.

    Beside a SQLite file, a file in a folder of the run's own; beside a
    PostgreSQL database, one on the same server, created when asked for (as
    a test harness commonly does), which needs a role that may create
    databases.
    """

    def __init__(self, beside, folder):
        self.beside = beside
        self.folder = pathlib.Path(folder)
        self.created = self.dropped = 0
        self._made_beside = {}

    def create(self):
        """Return a new pair: ``DATABASE_URL`` and ``AUDIT_DATABASE_URL``."""
        name = f"fresh_{uuid.uuid4().hex[:12]}"
        return {
            key: self._create(url, f"{name}_{number}")
            for number, (key, url) in enumerate(self.beside.items())
        }

    def drop(self, databases):
        """Delete a pair that create() made."""
        for url in databases.values():
            self.dropped += 1
            if make_url(url).get_backend_name() == "sqlite":
                os.remove(make_url(url).database)
                continue
            # From the database it was made beside: not from itself.
            with _autocommit(self._made_beside.pop(url)) as connection:
                name = make_url(url).database
                connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')

    def _create(self, beside, name):
        self.created += 1
        if make_url(beside).get_backend_name() == "sqlite":
            return f"sqlite:///{self.folder / name}.sqlite"
        with _autocommit(beside) as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = make_url(beside).set(database=name).render_as_string(hide_password=False)
        self._made_beside[url] = beside
        return url


@contextlib.contextmanager
def _autocommit(url):
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def app_with_tables(databases):
    """Create step 7's app on a pair of databases, and run init-db through it."""
    # The app warns as it starts before init-db: expected here, every time.
    logging.getLogger("step07_testing").setLevel(logging.ERROR)
    app = create_app({"TESTING": True, **databases})
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    return app


def delete_rows(app):
    """Delete every row of both databases' tables, committed."""
    for engine, table in [
        (app.extensions["engine"], "messages"),
        (app.extensions["audit_engine"], "audit_log"),
    ]:
        with engine.begin() as connection:
            connection.execute(text(f"DELETE FROM {table}"))


def ways(app, fresh=None):
    """Return each way to run one test on a clean database, by name.

    ``app`` serves the tests of the ways that keep one app for the run; a
    fresh database per test is among them when ``fresh`` makes databases.
    """

    def in_isolation():
        with isolated(app):
            run_one_test(app.test_client())

    def on_a_fresh_database():
        urls = fresh.create()
        fresh_app = app_with_tables(urls)
        try:
            run_one_test(fresh_app.test_client())
        finally:
            # Its pools closed first: a database in use cannot be dropped.
            dispose_engines(fresh_app)
            fresh.drop(urls)

    def then_deleting_the_rows():
        run_one_test(app.test_client())
        delete_rows(app)

    found = {BASELINE: in_isolation}
    if fresh is not None:
        found["a fresh database per test"] = on_a_fresh_database
    found["deleting the rows after each test"] = then_deleting_the_rows
    return found


def measure(backend, beside, folder, tests, rounds):
    """Time each way on one backend; return µs per test and ratios."""
    fresh = FreshDatabases(beside, folder)
    app = app_with_tables(fresh.create())
    try:
        clients = {name: CallAsClient(way) for name, way in ways(app, fresh).items()}
        timings = time_per_request(clients, "a test", tests, rounds, BASELINE)
    finally:
        dispose_engines(app)
    return {"backend": backend, "per_test": timings}


def markdown(results):
    """Return the results as a Markdown table."""
    lines = [
        "# What a clean database costs per test",
        "",
        "µs per test (a write and a read through the API), each way's fastest test,"
        " and × isolated(app)." + (f" {QUICK_NOTE}" if results["quick"] else ""),
        "",
        "| way | "
        + " | ".join(f"{b['backend']} µs | ×" for b in results["backends"])
        + " |",
        "| --- |" + " --- | --- |" * len(results["backends"]),
    ]
    for name in results["backends"][0]["per_test"]:
        cells = " | ".join(
            f"{b['per_test'][name]['µs per request']} | {b['per_test'][name]['ratio']}"
            for b in results["backends"]
        )
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def run(out, quick):
    """Measure on SQLite and on a throwaway PostgreSQL; write the outputs."""
    tests, rounds = (1, 6) if quick else (4, 45)
    results = {"quick": quick, "backends": []}
    with tempfile.TemporaryDirectory() as folder:
        beside = {
            "DATABASE_URL": f"sqlite:///{folder}/messages.sqlite",
            "AUDIT_DATABASE_URL": f"sqlite:///{folder}/audit.sqlite",
        }
        results["backends"].append(measure("sqlite", beside, folder, tests, rounds))
        bindir = find_binaries()
        if bindir is not None:
            cluster = Cluster(bindir, free_port())
            try:
                beside = {
                    "DATABASE_URL": cluster.create_database("messages"),
                    "AUDIT_DATABASE_URL": cluster.create_database("audit"),
                }
                results["backends"].append(
                    measure("postgresql", beside, folder, tests, rounds)
                )
            finally:
                cluster.destroy()

    return write_outputs(out, "per_test", results, markdown)


def main():
    """Read the command line, measure, and name the outputs."""
    run_part("python -m bench.per_test", __doc__, run)


if __name__ == "__main__":
    main()
