"""The Makefile's commands, run as a reader runs them."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from importlib import metadata

import pytest
import requests
from packaging.requirements import Requirement
from sqlalchemy.engine import make_url

from testbed import ROOT
from testbed.loopback import free_port
from testbed.loopback import wait_for_http
from testbed.mariadb import HOW_TO_GET_MARIADB
from testbed.mariadb import find_binaries as find_mariadb
from testbed.pgbouncer import HOW_TO_GET_PGBOUNCER
from testbed.pgbouncer import find_pgbouncer
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.postgres import find_binaries as find_postgres

from .conftest import skip_or_fail
from .steps import STEPS

PROJECT = "flask-sqlalchemy-without-the-extension"


def start_make_run(arguments, log_path, env=None):
    """Start ``make run`` on a free port, wait until it serves, and return
    the process and the step's URL."""
    port = free_port()
    with open(log_path, "wb") as log:
        make = subprocess.Popen(
            ["make", "run", *arguments, f"PORT={port}"],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            # make, a cluster's keeper and flask in a group of their own,
            # which a test stops as Ctrl-C or kill would.
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url, make, seconds=60, log_path=log_path)
    except BaseException:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=60)
        raise
    return make, url


# Ctrl-C in a terminal sends SIGINT to the whole foreground group; kill and
# closing the terminal, SIGTERM.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("db", "step", "stop_signal"),
    [
        ("postgresql", "step06_multiple_databases", signal.SIGINT),
        ("postgresql", "step06_multiple_databases", signal.SIGTERM),
        ("pgbouncer", "step08_pgbouncer", signal.SIGINT),
        ("mariadb", "step06_multiple_databases", signal.SIGINT),
    ],
)
def test_make_run_db_serves_the_step_on_a_throwaway_server(
    tmp_path, db, step, stop_signal
):
    if db == "mariadb" and find_mariadb() is None:
        skip_or_fail(HOW_TO_GET_MARIADB)
    if db != "mariadb" and find_postgres() is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    if db == "pgbouncer" and find_pgbouncer() is None:
        skip_or_fail(HOW_TO_GET_PGBOUNCER)
    log_path = tmp_path / "make-run.log"
    make, url = start_make_run([f"DB={db}", f"STEP={step}"], log_path)
    try:
        pool = requests.get(url + "/pool", timeout=10).json()
        created = requests.post(url + "/messages", json={"text": f"on {db} 😀"})
        listed = requests.get(url + "/messages", timeout=10).json()
        page = requests.get(url, timeout=10).text
    finally:
        os.killpg(make.pid, stop_signal)
        make.wait(timeout=60)

    # Behind PgBouncer, as the app's role, with BEHIND_POOLER on.
    user = {"pgbouncer": "app", "postgresql": "postgres", "mariadb": "root"}[db]
    driver = "mariadb+pymysql" if db == "mariadb" else "postgresql+psycopg"
    messages_url, audit_url = make_url(pool["url"]), make_url(pool["audit"]["url"])
    assert pool["url"].startswith(f"{driver}://{user}@127.0.0.1:")
    assert messages_url.database == "messages"
    if db == "mariadb":
        assert messages_url.query == {"charset": "utf8mb4"}
    if db == "pgbouncer":
        assert "This app runs with <code>BEHIND_POOLER</code> on." in page
        # The port it prints, for psql's SHOW POOLS, is the one the app uses.
        port = re.search(r"PgBouncer in \S+ on port (\d+),", log_path.read_text())
        assert port is not None, log_path.read_text()
        assert messages_url.port == int(port.group(1))
    # Step 6's audit database is a second database on the same server.
    assert audit_url == messages_url.set(database="audit")
    assert created.status_code == 201
    assert [message["text"] for message in listed] == [f"on {db} 😀"]
    # The server is gone with the command that used it.
    folders = re.findall(
        r"(?:A throwaway PostgreSQL|A throwaway MariaDB|PgBouncer) in (/\S+)[,\s]",
        log_path.read_text(),
    )
    assert len(folders) == (2 if db == "pgbouncer" else 1), log_path.read_text()
    deadline = time.monotonic() + 30
    while any(map(os.path.exists, folders)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(os.path.exists, folders))


@pytest.mark.slow
def test_make_run_serves_a_step_on_sqlite_and_stops_on_ctrl_c(tmp_path):
    log_path = tmp_path / "make-run.log"
    # A file of the test's own, not the reader's in instance/.
    database = f"sqlite:///{tmp_path / 'messages.sqlite'}"
    make, url = start_make_run(
        ["STEP=step03_teardown"], log_path, {"DATABASE_URL": database}
    )
    try:
        created = requests.post(url + "/messages", json={"text": "on SQLite"})
        listed = requests.get(url + "/messages", timeout=10).json()
    finally:
        os.killpg(make.pid, signal.SIGINT)
        make.wait(timeout=60)

    # make run ran init-db first, so the first write finds its table.
    assert "Initialized the database." in log_path.read_text()
    assert created.status_code == 201
    assert [message["text"] for message in listed] == ["on SQLite"]


def distributions_required(name, extras=()):
    """Return the distributions that installing ``name`` brings, with these
    extras of its own (psycopg[binary]'s, which it asks for, count)."""
    found, todo, seen = set(), [(name, extras)], set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        distribution = metadata.distribution(name)
        found.add(distribution.metadata["Name"].lower().replace("_", "-"))
        for line in distribution.requires or []:
            requirement = Requirement(line)
            # Those of no extra, or of the extras asked for, on this machine.
            if requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras)
            ):
                todo.append((requirement.name, tuple(requirement.extras)))
    return found


def test_make_run_installs_what_serving_a_step_needs_and_nothing_more():
    makefile = (ROOT / "Makefile").read_text()
    # make run installs the project alone; the extras wait for their targets.
    assert re.search(r"^run: \$\(INSTALLED\)$", makefile, re.M)
    recipe = makefile.split("$(INSTALLED): ", 1)[1].split("\n\n", 1)[0]
    assert "pip install --quiet -e .\n" in recipe
    # What make run imports: every step, and the throwaway servers' tooling.
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys\n"
            # What the interpreter loads before any import (site's hooks).
            "before = set(sys.modules)\n"
            f"for name in {STEPS!r} + ['testbed.postgres', 'testbed.pgbouncer',"
            " 'testbed.mariadb']:\n"
            "    __import__(name)\n"
            "    __import__(name.partition('.')[0] + '.wsgi')"
            " if name.startswith('step') else None\n"
            "print(json.dumps(sorted({m.partition('.')[0]"
            " for m in set(sys.modules) - before})))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    modules = set(json.loads(imported.stdout))
    providers = metadata.packages_distributions()
    # PyMySQL imports cryptography (its "rsa" extra, for MySQL 8's
    # passwords) where it is installed, as it is beside the tests.
    # And Mako, which Alembic writes step 11's revisions with, imports
    # Pygments where it is installed, to colour its tracebacks.
    allowed = (
        distributions_required(PROJECT)
        | distributions_required("pymysql", ("rsa",))
        | {"pygments"}
    )
    for module in modules:
        for distribution in providers.get(module, []):
            name = distribution.lower().replace("_", "-")
            assert name in allowed, (module, name)
