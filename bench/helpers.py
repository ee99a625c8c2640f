"""What step 10's helpers cost against Flask-SQLAlchemy 3.1's, on the same rows.

    python -m bench.helpers            # into bench/results/helpers.*
    python -m bench.helpers --quick    # a few rounds, into bench/quick-results/

Each case is a pair of apps making the same call on the same rows: step 10's
own app, through its helpers, and a Flask-SQLAlchemy app with the same model
and step 4's engine options, through the extension's. Both make it from the
same code (the functions in CASES), timed two ways, the cases taking turns
(bench/timing.py):

- per request: a request to a view that makes the call, through Flask's
  test client;
- alone: the call itself, in a request context pushed beforehand, with its
  Session already open, so that what is timed is the helper and its queries.
"""

import contextvars
import itertools
import logging
import tempfile
import timeit

from flask import Flask
from flask import abort
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

import step10_helpers
from step04_pooling.db import POOL_DEFAULTS
from step04_pooling.models import Message
from step10_helpers import db as step10_db
from step10_helpers import helpers as step10_helpers_module
from testbed import mariadb
from testbed.loopback import free_port
from testbed.postgres import Cluster
from testbed.postgres import find_binaries
from testbed.step_apps import close_app
from testbed.step_apps import initialize_databases

from .command_line import QUICK_NOTE
from .command_line import run_part
from .command_line import write_outputs
from .report import table
from .timing import CallAsClient
from .timing import time_per_request

# 45 messages: page 2 of 20 is a full page, and the COUNT has rows to count.
ROWS = 45
# Every case's request names page 2 of 20, which only paginate() reads.
PAGE = "?page=2&per_page=20"
STEP10, EXTENSION = "step 10", "Flask-SQLAlchemy 3.1"
# The goal: no helper, timed alone, dearer than the extension's by more
# than this. Runs of unchanged code move these ratios by up to 0.05: "no
# helper" alone on SQLite gave 1.04 to 1.08 over six runs, since step 10
# reaches its Session and models through functions (a pid check and a
# read of current_app each) where the extension has module globals.
AT_MOST = 1.10


class Calls:
    """What a case calls: step 10's helpers, or the extension's methods."""

    def __init__(self, **calls):
        self.__dict__.update(calls)
        self.renames = itertools.count()


def plain(calls):
    """No helper: the Session's get(), and a 404 by hand."""
    message = calls.session().get(calls.message_model(), 1)
    if message is None:
        abort(404)
    return [message], None


def page(calls):
    """Page 2 of 20 by id, and the COUNT of all."""
    model = calls.message_model()
    pagination = calls.paginate(select(model).order_by(model.id))
    return pagination.items, pagination.total


def page_without_count(calls):
    """Page 2 of 20 by id, without the COUNT."""
    model = calls.message_model()
    pagination = calls.paginate(select(model).order_by(model.id), count=False)
    return pagination.items, pagination.total


def get(calls):
    """Message 1, or a 404."""
    return [calls.get_or_404(calls.message_model(), 1)], None


def rename(calls):
    """Change message 1's text and commit: the commit signals' case."""
    message = calls.get_or_404(calls.message_model(), 1)
    # A new text each time, so that every commit writes an UPDATE.
    message.text = f"renamed {next(calls.renames)}"
    calls.session().commit()
    return [message], None


# Each case: its call, the method of its view's request, and the settings
# of the pair's two apps. The first uses no helper: what separates its two
# apps is the rest of them (step 10's two databases and its pool panel).
PLAIN = "no helper: session.get()"
CASES = {
    PLAIN: (plain, "GET", {}),
    "paginate(), with its COUNT": (page, "GET", {}),
    "paginate(count=False)": (page_without_count, "GET", {}),
    "get_or_404()": (get, "GET", {}),
    "paginate(), queries recorded": (page, "GET", {"record_queries": True}),
    "get_or_404(), queries recorded": (get, "GET", {"record_queries": True}),
    "a commit, models_committed sent": (rename, "POST", {"signals": True}),
}


def path_of(call):
    """Return the path of the view that makes ``call``."""
    return f"/bench/{call.__name__}{PAGE}"


def add_views(app, calls):
    """Route each case's request to a view that makes its call."""
    committed = []
    calls.models_committed.connect(
        lambda sender, changes: committed.append(
            [(type(row).__name__, operation) for row, operation in changes]
        ),
        sender=app,
        weak=False,
    )

    def view_of(call):
        def view():
            messages, total = call(calls)
            return {
                "ids": [message.id for message in messages],
                "total": total,
                "queries recorded": len(calls.get_recorded_queries()),
                "committed": committed.pop() if committed else None,
            }

        return view

    # Cases that differ in their apps' settings share a view.
    views = {call: method for call, method, _ in CASES.values()}
    for call, method in views.items():
        endpoint = call.__name__
        app.add_url_rule(
            f"/bench/{endpoint}", endpoint, view_of(call), methods=[method]
        )
    app.extensions["bench calls"] = calls
    return app


def step10_app(databases, record_queries=False, signals=False):
    """Step 10's app: its helpers, its models; its commit signals always on."""
    app = step10_helpers.create_app({**databases, "RECORD_QUERIES": record_queries})
    calls = Calls(
        paginate=step10_helpers_module.paginate,
        get_or_404=step10_helpers_module.get_or_404,
        get_recorded_queries=step10_helpers_module.get_recorded_queries,
        models_committed=step10_helpers_module.models_committed,
        session=step10_db.get_session,
        message_model=lambda: step10_db.get_models().Message,
    )
    return add_views(app, calls)


def extension_app(databases, record_queries=False, signals=False):
    """A Flask-SQLAlchemy 3.1 app: its helpers; its signals when asked for."""
    from flask_sqlalchemy import SQLAlchemy
    from flask_sqlalchemy.record_queries import get_recorded_queries
    from flask_sqlalchemy.track_modifications import models_committed

    app = Flask("flask_sqlalchemy")
    app.config["SQLALCHEMY_DATABASE_URI"] = databases["DATABASE_URL"]
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = POOL_DEFAULTS
    app.config["SQLALCHEMY_RECORD_QUERIES"] = record_queries
    # Off by default in the extension: its signals cost only when on.
    app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = signals
    db = SQLAlchemy(app)
    with app.app_context():
        # What close_app() disposes of.
        app.extensions["engines"] = {"default": db.engine}
    calls = Calls(
        paginate=db.paginate,
        get_or_404=db.get_or_404,
        get_recorded_queries=get_recorded_queries,
        models_committed=models_committed,
        session=lambda: db.session,
        message_model=lambda: Message,
    )
    return add_views(app, calls)


def prepare(databases):
    """Create step 10's tables and its ROWS messages, through its API."""
    # Step 10 warns as it starts before init-db: expected here.
    logging.getLogger("step10_helpers").setLevel(logging.ERROR)
    initialize_databases(step10_helpers.create_app, databases)
    app = step10_helpers.create_app(databases)
    client = app.test_client()
    for number in range(ROWS):
        created = client.post("/messages", json={"text": f"message {number}"})
        assert created.status_code == 201, created.get_json()
    close_app(app)


def sender(client, call, method):
    """A stand-in client whose get() sends the request of the case's view."""

    def send():
        response = client.open(path_of(call), method=method)
        assert response.status_code == 200, (call.__name__, response.get_json())

    return CallAsClient(send)


class Alone:
    """A stand-in client whose get() makes the case's call alone, in a request
    context pushed once, in a contextvars context of its own (so that each
    case finds its own app current): its Session stays open between calls."""

    status_code = 200

    def __init__(self, app, call, method):
        self._calls = app.extensions["bench calls"]
        self._call = call
        self._context = contextvars.copy_context()
        self._request = app.test_request_context(path_of(call), method=method)
        self._context.run(self._request.push)

    def get(self, path):
        """Make the call; ``path`` is not used."""
        self._context.run(self._make_call)
        return self

    def _make_call(self):
        # Forget the rows the call before loaded, as a request's new Session
        # would not have them.
        self._calls.session().expunge_all()
        self._call(self._calls)

    def close(self):
        """Pop the request context: its teardown closes the Session."""
        self._context.run(self._request.pop)


def measure(backend, databases, requests, rounds):
    """Time every case's pair on one backend, per request and alone."""
    prepare(databases)
    apps = {}
    per_request, alone = {}, {}
    for case, (call, method, settings) in CASES.items():
        answers = {}
        for who, make in ((STEP10, step10_app), (EXTENSION, extension_app)):
            key = (who, tuple(sorted(settings.items())))
            if key not in apps:
                apps[key] = make(databases, **settings)
            client = apps[key].test_client()
            answers[who] = client.open(path_of(call), method=method).get_json()
            per_request[case, who] = sender(client, call, method)
            alone[case, who] = Alone(apps[key], call, method)
        # Both answer the same JSON before anything is timed.
        assert answers[STEP10] == answers[EXTENSION], (case, answers)
    try:
        timings = {
            way: time_per_request(clients, "", requests, rounds)
            for way, clients in (("per request", per_request), ("alone", alone))
        }
        sessions = making_a_session(apps[STEP10, ()], rounds)
    finally:
        for caller in alone.values():
            caller.close()
        for app in apps.values():
            close_app(app)
    return {
        "backend": backend,
        **{way: pairs(timings[way]) for way in timings},
        "making a Session, µs": sessions,
    }


def making_a_session(app, rounds):
    """Time making and closing a Session, as each request does: step 10's,
    whose binds name two databases, against one bound to one engine."""
    factories = {
        "step 10's, binds for two databases": app.extensions["session"].session_factory,
        "bound to one engine": sessionmaker(bind=app.extensions["engine"]),
    }
    timers = {
        name: timeit.Timer(lambda f=f: f().close()) for name, f in factories.items()
    }
    fastest = dict.fromkeys(factories, float("inf"))
    # The two taking turns, 100 at a time; the fastest, as for the requests.
    for _ in range(rounds):
        for name, timer in timers.items():
            fastest[name] = min(fastest[name], timer.timeit(100) / 100)
    return {name: round(seconds * 1e6, 1) for name, seconds in fastest.items()}


def pairs(timings):
    """Each case's two times, and step 10's over the extension's."""
    found = {}
    for case in CASES:
        step10 = timings[case, STEP10]["µs per request"]
        extension = timings[case, EXTENSION]["µs per request"]
        found[case] = {
            f"{STEP10} µs": step10,
            f"{EXTENSION} µs": extension,
            "ratio": round(step10 / extension, 3),
        }
    return found


# The servers a part may start, which python -m bench's --no-postgres and
# --no-mariadb leave out.
SERVERS = ("postgresql", "mariadb")


def throwaway_databases(folder, servers=SERVERS):
    """Yield each backend's name and a pair of empty databases on it:
    SQLite files, and a throwaway PostgreSQL's and MariaDB's, of ``servers``,
    when installed."""
    yield (
        "sqlite",
        {
            "DATABASE_URL": f"sqlite:///{folder}/messages.sqlite",
            "AUDIT_DATABASE_URL": f"sqlite:///{folder}/audit.sqlite",
        },
    )
    if "postgresql" in servers and (bindir := find_binaries()) is not None:
        yield from on_a_server("postgresql", Cluster(bindir, free_port()))
    if "mariadb" in servers and (binaries := mariadb.find_binaries()) is not None:
        yield from on_a_server("mariadb", mariadb.Instance(binaries, free_port()))


def on_a_server(backend, server):
    """Yield a pair of databases on a throwaway server, then destroy it."""
    try:
        yield (
            backend,
            {
                "DATABASE_URL": server.create_database("messages"),
                "AUDIT_DATABASE_URL": server.create_database("audit"),
            },
        )
    finally:
        server.destroy()


def goals(results):
    """Each helper, timed alone, at most AT_MOST times the extension's, on
    every backend."""
    rows = []
    for case in list(CASES)[1:]:
        ratios = {
            backend["backend"]: backend["alone"][case]["ratio"]
            for backend in results["backends"]
        }
        rows.append(
            {
                "goal": f"{case}, alone: at most {AT_MOST:.2f}× the extension's",
                **ratios,
                "met": "yes" if max(ratios.values()) <= AT_MOST else "NO",
            }
        )
    return rows


def markdown(results):
    """Return the results as Markdown: two tables per backend, then the goals."""
    parts = [
        f"# Step 10's helpers against {EXTENSION}'s\n\n",
        "µs per call, each app's fastest of the run, and step 10's over the"
        " extension's: per request through the test client, and the call alone."
        + (f" {QUICK_NOTE}" if results["quick"] else "")
        + "\n",
    ]
    for backend in results["backends"]:
        for way in ("per request", "alone"):
            parts.append(f"\n## {backend['backend']}: {way}\n\n")
            parts.append(
                table([{"case": case, **row} for case, row in backend[way].items()])
            )
        sessions = ", ".join(
            f"{name} {µs} µs" for name, µs in backend["making a Session, µs"].items()
        )
        parts.append(f"\nMaking and closing a Session: {sessions}.\n")
    if not results["quick"]:
        parts += ["\n## Goals\n\n", table(goals(results))]
    return "".join(parts)


def run(out, quick, servers=SERVERS):
    """Measure on SQLite and on each of ``servers`` installed; write the
    outputs."""
    requests, rounds = (2, 10) if quick else (10, 300)
    results = {"quick": quick, "backends": []}
    with tempfile.TemporaryDirectory() as folder:
        for backend, databases in throwaway_databases(folder, servers):
            results["backends"].append(measure(backend, databases, requests, rounds))
    return write_outputs(out, "helpers", results, markdown)


def main():
    """Read the command line, measure, and name the outputs."""
    run_part("python -m bench.helpers", __doc__, run)


if __name__ == "__main__":
    main()
