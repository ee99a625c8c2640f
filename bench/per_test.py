"""What it costs to give each test a clean database, three ways, on both backends.

    python -m bench.per_test            # into bench/results/per_test.*
    python -m bench.per_test --quick    # a few rounds: checks that it runs

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

import argparse
import json
import logging
import os
import pathlib
import tempfile
import uuid

from sqlalchemy import text

from step07_testing import create_app
from step07_testing.testing import isolated
from tests.postgres import Cluster
from tests.postgres import find_binaries
from tests.support import free_port

from .timing import CallAsClient
from .timing import time_per_request

BASELINE = "isolated(app)"


def run_one_test(client):
    """Write a message and read the list: a test that needs an empty database."""
    created = client.post("/messages", json={"text": "a test's write"})
    assert created.status_code == 201, created.get_json()
    assert client.get("/messages").get_json() == [created.get_json()]


class SQLiteDatabases:
    """New pairs of SQLite files, in a folder of the run's own."""

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)

    def create(self):
        """Return the two URLs of a new pair of databases."""
        name = uuid.uuid4().hex[:12]
        return {
            "DATABASE_URL": f"sqlite:///{self.folder / name}.sqlite",
            "AUDIT_DATABASE_URL": f"sqlite:///{self.folder / name}-audit.sqlite",
        }

    def drop(self, databases):
        """Delete a pair's files."""
        for url in databases.values():
            os.remove(url.removeprefix("sqlite:///"))


class PostgreSQLDatabases:
    """New pairs of databases on a PostgreSQL server."""

    def __init__(self, server):
        self.server = server

    def create(self):
        """Return the two URLs of a new pair of databases."""
        # Each created when asked for, as a test harness commonly does.
        name = f"test_{uuid.uuid4().hex[:12]}"
        return {
            "DATABASE_URL": self.server.create_database(name),
            "AUDIT_DATABASE_URL": self.server.create_database(f"{name}_audit"),
        }

    def drop(self, databases):
        """Drop a pair of databases."""
        for url in databases.values():
            self.server.drop_database(url)


def new_app(databases):
    """Create step 7's app on a pair of databases, tables created."""
    # The app warns as it starts before init-db: expected here, every time.
    logging.getLogger("step07_testing").setLevel(logging.ERROR)
    app = create_app({"TESTING": True, **databases})
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    return app


def dispose(app):
    """Close the pooled connections of the app's engines."""
    for engine in app.extensions["engines"].values():
        engine.dispose()


def cases(databases):
    """Return each way to run one test on a clean database, as a client."""
    isolated_app = new_app(databases.create())
    deleting_app = new_app(databases.create())

    def in_isolation():
        with isolated(isolated_app):
            run_one_test(isolated_app.test_client())

    def on_a_fresh_database():
        urls = databases.create()
        app = new_app(urls)
        try:
            run_one_test(app.test_client())
        finally:
            dispose(app)
            databases.drop(urls)

    def then_deleting_the_rows():
        run_one_test(deleting_app.test_client())
        for engine, table in [
            (deleting_app.extensions["engine"], "messages"),
            (deleting_app.extensions["audit_engine"], "audit_log"),
        ]:
            with engine.begin() as connection:
                connection.execute(text(f"DELETE FROM {table}"))

    return {
        BASELINE: CallAsClient(in_isolation),
        "a fresh database per test": CallAsClient(on_a_fresh_database),
        "deleting the rows after each test": CallAsClient(then_deleting_the_rows),
    }, [isolated_app, deleting_app]


def measure(backend, databases, tests, rounds):
    """Time each way on one backend; return µs per test and ratios."""
    clients, apps = cases(databases)
    try:
        timings = time_per_request(clients, "a test", tests, rounds, BASELINE)
    finally:
        for app in apps:
            dispose(app)
    return {"backend": backend, "per_test": timings}


def markdown(results):
    """Return the results as a Markdown table."""
    lines = [
        "# What a clean database costs per test",
        "",
        "Median µs per test (a write and a read through the API), and × isolated(app).",
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
    tests, rounds = (3, 2) if quick else (20, 9)
    results = {"quick": quick, "backends": []}
    with tempfile.TemporaryDirectory() as folder:
        results["backends"].append(
            measure("sqlite", SQLiteDatabases(folder), tests, rounds)
        )
    bindir = find_binaries()
    if bindir is not None:
        cluster = Cluster(bindir, free_port())
        try:
            results["backends"].append(
                measure("postgresql", PostgreSQLDatabases(cluster), tests, rounds)
            )
        finally:
            cluster.destroy()

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_test.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "per_test.md").write_text(markdown(results))
    return [out / "per_test.md", out / "per_test.json"]


def main():
    """Read the command line, measure, and name the outputs."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.per_test", description=__doc__
    )
    parser.add_argument("--out", default="bench/results", help="the outputs' folder")
    parser.add_argument("--quick", action="store_true", help="a few rounds only")
    arguments = parser.parse_args()
    for path in run(arguments.out, arguments.quick):
        print(path)


if __name__ == "__main__":
    main()
