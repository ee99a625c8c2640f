"""Step 4 against Flask-SQLAlchemy 3.1 and the bare ten lines, three ways.

    python -m bench.parity            # into bench/results/parity.*; 5 minutes
    python -m bench.parity --quick    # a few rounds, no instruction count

It runs on SQLite, and on a throwaway PostgreSQL and MariaDB of its own
when they are installed; the instruction count needs valgrind (apt-get
install valgrind), and says so without it.

Three apps answer GET /messages/1 with the same JSON, from the same model
and step 4's engine options: step 4 as it is, Flask-SQLAlchemy 3.1, and a
bare scoped_session app (bench/apps.py), with pre-ping on, step 4's
default, and off. An independent audit's harness (pre-ping off, the best
third of 30 rounds) found step 4 1.04 to 1.05 times the extension on
SQLite, where the main table's fastest request says 1.006: so each pair is
measured three ways, each weighing something else:

- fastest request: every request timed on its own, and the case's fastest
  of the run: the request's own path, with nothing else in it, as the
  main table measures;
- best third of rounds: each round's mean per request, and the mean of
  the fastest third of the rounds: what a run of requests pays, garbage
  collections and cold caches included, the outside harness's way;
- instructions per request: valgrind's cachegrind counts what a process
  executes; two processes make the app, one sends N requests and the
  other none, and the difference over N is one request's count; with
  Python's string hashing and the process's addresses fixed, and the
  objects made before the requests frozen out of garbage collection: the
  same count on a busy machine as on a quiet one. On SQLite, pre-ping off;
  the database's own work runs in the process too, the same for each app.

Two more apps show what the measures resolve: step 4 without the pool
panel's request counter (monitor.py), the scaffolding a reader's copy
leaves out, and a control, step 4 holding 5,000 lists it never touches:
what the control moves, the measure moves by for no reason in the code.
"""

import shutil
import sys
import tempfile

import step04_pooling
from step04_pooling.db import POOL_DEFAULTS

from . import apps
from . import cachegrind
from .cachegrind import send_counted
from .command_line import QUICK_NOTE
from .command_line import run_part
from .command_line import write_outputs
from .helpers import SERVERS
from .helpers import throwaway_databases
from .report import NOISE
from .report import table
from .timing import time_per_request

STEP4, EXTENSION, BARE = "step04_pooling", "Flask-SQLAlchemy 3.1", "bare scoped_session"
NO_COUNTER = "step 4 without the panel's request counter"
REPEATED = "step04_pooling, counted again"
CONTROL = "step 4 with 5,000 idle lists"
PRE_PING = {"pre-ping on": True, "pre-ping off": False}
# The requests whose instructions are counted, in the run that sends them.
COUNTED_REQUESTS = 3000
# The message they read: the first of a new database's.
COUNTED_PATH = "/messages/1"


def step4(url, pre_ping):
    """Step 4 as it is."""
    return step04_pooling.create_app(
        {"DATABASE_URL": url, "ENGINE_OPTIONS": {"pool_pre_ping": pre_ping}}
    )


def step4_without_the_request_counter(url, pre_ping):
    """Step 4 with the pool panel's request counter (monitor.py) taken off
    the request path: what a reader's copy without the panel pays."""
    app = step4(url, pre_ping)
    app.wsgi_app = app.wsgi_app._wsgi_app
    return app


def step4_with_idle_lists(url, pre_ping):
    """A control: step 4 and 5,000 empty lists it never touches. What they
    move is what the measure moves by for reasons other than the code run."""
    app = step4(url, pre_ping)
    app.extensions["idle lists"] = [[] for _ in range(5000)]
    return app


def extension(url, pre_ping):
    """Flask-SQLAlchemy 3.1, with step 4's engine options."""
    return apps.flask_sqlalchemy(
        url, None, **{**POOL_DEFAULTS, "pool_pre_ping": pre_ping}
    )


def bare(url, pre_ping):
    """The ten lines of the article, with step 4's engine options."""
    return apps.bare_scoped_session(
        url, None, **{**POOL_DEFAULTS, "pool_pre_ping": pre_ping}
    )


APPS = {
    STEP4: step4,
    EXTENSION: extension,
    BARE: bare,
    NO_COUNTER: step4_without_the_request_counter,
    CONTROL: step4_with_idle_lists,
}


def make_app(name, pre_ping, url):
    """Return one of the apps on ``url``, pre-ping on or off."""
    return APPS[name](url, pre_ping)


def timed(url, requests, rounds):
    """Time the apps, pre-ping on and off, all taking turns."""
    path = apps.prepare_database(url)
    made = {
        (setting, name): make_app(name, pre_ping, url)
        for setting, pre_ping in PRE_PING.items()
        for name in APPS
    }
    clients = {
        f"{name}, {setting}": app.test_client() for (setting, name), app in made.items()
    }
    answers = {name: client.get(path).get_json() for name, client in clients.items()}
    # The same JSON from each before anything is timed.
    assert len({repr(answer) for answer in answers.values()}) == 1, answers
    try:
        timings = time_per_request(clients, path, requests, rounds)
    finally:
        for app in made.values():
            for engine in engines_of(app):
                engine.dispose()
    return {
        setting: {
            name: {
                "fastest µs": timings[f"{name}, {setting}"]["µs per request"],
                "best third of rounds µs": timings[f"{name}, {setting}"][
                    "µs per request, best third of rounds"
                ],
            }
            for name in APPS
        }
        for setting in PRE_PING
    }


def engines_of(app):
    """Return the engines of one of the apps."""
    if "sqlalchemy" in app.extensions:
        with app.app_context():
            return list(app.extensions["sqlalchemy"].engines.values())
    if "engines" in app.extensions:
        return list(app.extensions["engines"].values())
    return [app.extensions["engine"]]


def send(name, url, requests):
    """Make one app, pre-ping off, and send its counted requests to the
    message counted() stored."""
    send_counted(make_app(name, False, url).test_client(), COUNTED_PATH, requests)


def instructions_per_request(name, url):
    """Count what one request of an app executes (bench/cachegrind.py)."""
    return cachegrind.instructions_per_request(
        "bench.parity", [name, url], COUNTED_REQUESTS
    )


def counted(folder):
    """Count each app's instructions per request on SQLite, or say why not."""
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed (apt-get install valgrind)"}
    url = f"sqlite:///{folder}/instructions.sqlite"
    assert apps.prepare_database(url) == COUNTED_PATH
    counts = {name: instructions_per_request(name, url) for name in APPS}
    # Step 4 counted once more, last: how far one app's count moves from
    # one pair of runs to the next.
    counts[REPEATED] = instructions_per_request(STEP4, url)
    return counts


WAYS = {"fastest": "fastest µs", "best third of rounds": "best third of rounds µs"}


def columns(timed, value):
    """Return a table row's cells: ``value(row, key)`` for each pre-ping
    setting and each way."""
    return {
        f"{setting.removeprefix('pre-ping ')}, {way}": value(row, key)
        for setting, row in timed.items()
        for way, key in WAYS.items()
    }


def goals(results):
    """Step 4 no slower than the extension, each way, on every backend:
    within NOISE, or within what the control moved from step 4 in the same
    cell, if more."""
    rows = []
    for backend in results["backends"]:
        for setting, row in backend["timed"].items():
            for way, key in WAYS.items():
                ratio = row[STEP4][key] / row[EXTENSION][key]
                allowance = max(NOISE, abs(row[CONTROL][key] / row[STEP4][key] - 1))
                rows.append(
                    {
                        "goal": f"step 4 no slower than the extension, {way}",
                        "backend": f"{backend['backend']}, {setting}",
                        "measured": f"{ratio:.3f}",
                        "allowed": f"{1 + allowance:.3f}",
                        "met": "yes" if ratio <= 1 + allowance else "NO",
                    }
                )
    return rows


def markdown(results):
    """Return the results as Markdown: two tables per backend (µs, and each
    app over the extension), the instruction counts, and the goals."""
    parts = [
        "# Step 4 against Flask-SQLAlchemy 3.1, three ways\n\n",
        "GET /messages/1 through Flask's test client, the apps taking turns"
        " (bench/parity.py): µs per request, the fastest request of the run"
        " and the mean of the fastest third of the rounds, pre-ping on and"
        " off." + (f" {QUICK_NOTE}" if results["quick"] else "") + "\n",
    ]
    for backend in results["backends"]:
        timed = backend["timed"]
        parts.append(f"\n## {backend['backend']}: µs per request\n\n")
        parts.append(
            table(
                [
                    {
                        "app": name,
                        **columns(timed, lambda row, key, name=name: row[name][key]),
                    }
                    for name in APPS
                ]
            )
        )
        parts.append(f"\n## {backend['backend']}: over {EXTENSION}\n\n")
        parts.append(
            table(
                [
                    {
                        "app": name,
                        **columns(
                            timed,
                            lambda row, key, name=name: (
                                f"{row[name][key] / row[EXTENSION][key]:.3f}"
                            ),
                        ),
                    }
                    for name in APPS
                    if name != EXTENSION
                ]
            )
        )
    counts = results["instructions"]
    parts.append("\n## Instructions per request (SQLite, pre-ping off)\n\n")
    if "skipped" in counts:
        parts.append(f"Not counted: {counts['skipped']}.\n")
    else:
        parts.append(
            table(
                [
                    {
                        "app": name,
                        "instructions per request": f"{counts[name]:,}",
                        f"over {EXTENSION}": f"{counts[name] / counts[EXTENSION]:.4f}",
                    }
                    for name in [*APPS, REPEATED]
                ]
            )
        )
    if not results["quick"]:
        parts += ["\n## Goals\n\n", table(goals(results))]
    return "".join(parts)


def run(out, quick, servers=SERVERS):
    """Measure on SQLite and on each of ``servers`` installed; write the
    outputs."""
    requests, rounds = (5, 6) if quick else (25, 150)
    results = {"quick": quick, "backends": []}
    with tempfile.TemporaryDirectory() as folder:
        for backend, databases in throwaway_databases(folder, servers):
            results["backends"].append(
                {
                    "backend": backend,
                    "timed": timed(databases["DATABASE_URL"], requests, rounds),
                }
            )
        results["instructions"] = (
            {"skipped": "a --quick run counts no instructions"}
            if quick
            else counted(folder)
        )
    return write_outputs(out, "parity", results, markdown)


def main():
    """Read the command line, measure, and name the outputs."""
    if sys.argv[1:2] == ["--send"]:
        name, url, requests = sys.argv[2:]
        send(name, url, int(requests))
        return
    run_part("python -m bench.parity", __doc__, run)


if __name__ == "__main__":
    main()
