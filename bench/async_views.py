"""What an async view costs per request: Flask's default against steps 9 and 10's.

    python -m bench.async_views            # into bench/results/async_views.*
    python -m bench.async_views --quick    # a few rounds, into bench/quick-results/

The same read of one message (``GET /messages/1``, step 9's Session keyed
by the app context), from a sync view and from an async one, the async one
run two ways: by Flask's default, asgiref's async_to_sync (a thread and an
event loop made for each call), and by ``async_views.py``'s Flask (an event
loop on the request's own thread). And Flask-SQLAlchemy-Lite, whose
teardown is an async function that Flask runs on every request, on both.

Then, on PostgreSQL, the same read through an ``AsyncSession``: the
example beside the steps (``async_session/``) in each of its working
patterns, and Flask-SQLAlchemy-Lite's async session, against step 9's sync
Session.

Each set timed twice, the cases taking turns in each (bench/timing.py): in
this process, as under a threaded server; and in a process that gevent
has monkey-patched first, as in gunicorn's gevent worker, where
``async_views.py`` runs each loop in the greenlet, one at a time.
"""

import json
import logging
import subprocess
import sys
import tempfile

import flask
from flask import abort
from flask.globals import app_ctx
from sqlalchemy import create_engine
from sqlalchemy import make_url
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

import async_session
from step04_pooling.db import POOL_DEFAULTS
from step04_pooling.models import Message
from step09_app_context.async_views import Flask as AsyncViewsFlask
from testbed import ROOT

from .apps import prepare_database
from .command_line import QUICK_NOTE
from .command_line import run_part
from .command_line import write_outputs
from .helpers import throwaway_databases
from .report import table
from .timing import time_per_request

SYNC = "sync view"
ASYNC_VIEWS = "async view, async_views.py (steps 9, 10)"
DEFAULT = "async view, Flask's default (asgiref)"
LITE_DEFAULT = "Flask-SQLAlchemy-Lite, Flask's default"
LITE_ASYNC_VIEWS = "Flask-SQLAlchemy-Lite, async_views.py's Flask"


def found_or_404(message):
    """Return a message as the API shows it, or abort with 404."""
    if message is None:
        abort(404)
    return message.to_dict()


def app_context_scope(url, flask_class, is_async):
    """Step 9's Session scope in ten lines, its read in a sync or async view."""
    engine = create_engine(url, **POOL_DEFAULTS)
    session = scoped_session(
        sessionmaker(bind=engine), scopefunc=lambda: id(app_ctx._get_current_object())
    )
    app = flask_class("app_context_scope")
    app.teardown_appcontext(lambda exception: session.remove())
    app.extensions["engines"] = {"default": engine}

    def read(message_id):
        return found_or_404(session.get(Message, message_id))

    async def read_async(message_id):
        return found_or_404(session.get(Message, message_id))

    app.add_url_rule(
        "/messages/<int:message_id>", "get_message", read_async if is_async else read
    )
    return app


def lite(url, flask_class):
    """Flask-SQLAlchemy-Lite, its sync session, step 4's engine options."""
    from flask_sqlalchemy_lite import SQLAlchemy

    app = flask_class("flask_sqlalchemy_lite")
    app.config["SQLALCHEMY_ENGINES"] = {"default": {"url": url, **POOL_DEFAULTS}}
    db = SQLAlchemy(app)
    with app.app_context():
        app.extensions["engines"] = {"default": db.engine}
    app.add_url_rule(
        "/messages/<int:message_id>",
        "get_message",
        lambda message_id: db.get_or_abort(Message, message_id).to_dict(),
    )
    return app


def async_session_app(url, pattern):
    """The AsyncSession example in one of its patterns."""
    return async_session.create_app({"DATABASE_URL": url, "ASYNC_PATTERN": pattern})


def lite_async(url):
    """Flask-SQLAlchemy-Lite's async session (psycopg's async mode), read from
    an async view; Flask's default runs the view and the teardown."""
    from flask_sqlalchemy_lite import SQLAlchemy

    app = flask.Flask("flask_sqlalchemy_lite_async")
    async_url = make_url(url).set(drivername="postgresql+psycopg")
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {
        "default": {"url": async_url, **POOL_DEFAULTS}
    }
    db = SQLAlchemy(app)
    app.extensions["engines"] = {}

    async def read(message_id):
        return found_or_404(await db.async_session.get(Message, message_id))

    app.add_url_rule("/messages/<int:message_id>", "get_message", read)
    return app


CASES = {
    SYNC: lambda url: app_context_scope(url, flask.Flask, is_async=False),
    ASYNC_VIEWS: lambda url: app_context_scope(url, AsyncViewsFlask, is_async=True),
    DEFAULT: lambda url: app_context_scope(url, flask.Flask, is_async=True),
    LITE_DEFAULT: lambda url: lite(url, flask.Flask),
    LITE_ASYNC_VIEWS: lambda url: lite(url, AsyncViewsFlask),
}

# The same read through an AsyncSession, on PostgreSQL.
SYNC_SESSION = "sync Session, step 9's scope"
ASYNC_SESSION_CASES = {
    SYNC_SESSION: CASES[SYNC],
    **{
        f"AsyncSession, {pattern}": (
            lambda url, pattern=pattern: async_session_app(url, pattern)
        )
        for pattern in ("one-loop", "loop-per-thread", "nullpool")
    },
    "Flask-SQLAlchemy-Lite, async session": lite_async,
}
CASE_SETS = {"async views": CASES, "AsyncSession": ASYNC_SESSION_CASES}

# What the child process runs: gevent's patching first, as gunicorn's
# gevent worker does, then the same cases.
UNDER_GEVENT = """
from gevent import monkey
monkey.patch_all()
import json, sys
from bench.async_views import measure_here
print(json.dumps(measure_here(*json.loads(sys.argv[1]))))
"""


def measure_here(url, path, requests, rounds, cases="async views"):
    """Time every case of a set on ``url`` in this process; return its
    timings."""
    apps = {name: make(url) for name, make in CASE_SETS[cases].items()}
    try:
        clients = {name: app.test_client() for name, app in apps.items()}
        return time_per_request(clients, path, requests, rounds)
    finally:
        for app in apps.values():
            if "async_runner" in app.extensions:
                app.extensions["async_runner"].close()
            for engine in app.extensions.get("engines", {}).values():
                engine.dispose()


def measure_under_gevent(url, path, requests, rounds, cases="async views"):
    """Time every case of a set in a child process that gevent patched first."""
    arguments = json.dumps([url, path, requests, rounds, cases])
    completed = subprocess.run(
        [sys.executable, "-c", UNDER_GEVENT, arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the gevent run failed:\n{completed.stderr}")
    return json.loads(completed.stdout.splitlines()[-1])


def measure(backend, url, requests, rounds):
    """Time the case sets on one backend (AsyncSession's on PostgreSQL), with
    threads and under gevent."""
    path = prepare_database(url)
    results = {"backend": backend}
    for cases in CASE_SETS:
        if cases == "AsyncSession" and backend != "postgresql":
            continue
        results[cases] = {
            "threads": measure_here(url, path, requests, rounds, cases),
            "gevent": measure_under_gevent(url, path, requests, rounds, cases),
        }
    return results


def goals(results):
    """async_views.py's async view no dearer than Flask's default, both ways;
    and what an async view adds to a sync one."""
    rows = []
    for backend in results["backends"]:
        for way in ("threads", "gevent"):
            timed = backend["async views"][way]
            ratio = (
                timed[ASYNC_VIEWS]["µs per request"]
                / (timed[DEFAULT]["µs per request"])
            )
            rows.append(
                {
                    "goal": f"{backend['backend']}, {way}: async_views.py's async"
                    " view no dearer than Flask's default",
                    "measured": f"{ratio:.3f}",
                    "met": "yes" if ratio <= 1 else "NO",
                }
            )
    return rows


def markdown(results):
    """Return the results as Markdown: two tables per backend, then the goals."""
    parts = [
        "# What an async view costs per request\n\n",
        "µs per request through Flask's test client, `GET /messages/1`, every"
        " request timed on its own, the cases taking turns: each case's fastest"
        " request, its ratio to the first case's, and the mean of the best third"
        " of rounds (bench/timing.py). Threads: in the benchmark's process."
        " gevent: in a process gevent monkey-patched first. Async views: the"
        " same sync Session read from a sync and an async view. AsyncSession:"
        " the read through an AsyncSession, against step 9's sync Session."
        + (f" {QUICK_NOTE}" if results["quick"] else "")
        + "\n",
    ]
    for cases in CASE_SETS:
        for backend in results["backends"]:
            for way, timed in backend.get(cases, {}).items():
                parts.append(f"\n## {cases}, {backend['backend']}: {way}\n\n")
                parts.append(
                    table([{"case": case, **row} for case, row in timed.items()])
                )
    if not results["quick"]:
        parts += ["\n## Goals\n\n", table(goals(results))]
    return "".join(parts)


def run(out, quick, servers=("postgresql",)):
    """Measure on SQLite and on PostgreSQL when installed; write the outputs."""
    requests, rounds = (2, 10) if quick else (10, 300)
    results = {"quick": quick, "backends": []}
    # Step 4 warns as it starts before its table exists: expected here.
    logging.getLogger("step04_pooling").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        for backend, databases in throwaway_databases(folder, servers):
            url = databases["DATABASE_URL"]
            results["backends"].append(measure(backend, url, requests, rounds))
    return write_outputs(out, "async_views", results, markdown)


def main():
    """Read the command line, measure, and name the outputs."""
    run_part("python -m bench.async_views", __doc__, run)


if __name__ == "__main__":
    main()
