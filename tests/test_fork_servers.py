"""Fork drills with the servers readers run: a pool of its own in every child.

A server that loads the app before it forks (uWSGI without ``--lazy-apps``,
``gunicorn --preload``) or a ``multiprocessing`` pool with the fork start
method hands each child the parent's pool, with the connection the parent
opened at startup (tests/preloaded_app.py). Step 3 lets the children use
that connection: one server session for several processes. From step 4 on,
``PoolOwner`` gives each child empty pools before it first uses one.

uWSGI forks in C, so Python's ``os.register_at_fork`` hooks never run in
its workers unless it is started with ``--py-call-osafterfork``: it is
started here with its defaults, which is why the check is by pid.
"""

import multiprocessing
import os
import sys

import pytest
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text

from testbed.load import send_load
from testbed.loopback import wait_for_http

from .preloading import serve_under_uwsgi
from .preloading import stop_uwsgi
from .steps import import_step
from .steps import served
from .steps import steps_from

pytestmark = pytest.mark.slow

STEPS_WITH_POOL_OWNER = steps_from("step04_pooling")
# The load: 12 clients of 25 writes each, spread over the workers.
CLIENTS = 12
REQUESTS_EACH = 25


@pytest.fixture
def backend():
    """Run every drill on PostgreSQL, whose server sessions can be counted."""
    return "postgresql"


def server_session_of(server, backend_pid):
    """Return when a server session last changed state, and the server's now."""
    with server.admin_engine().connect() as connection:
        return connection.execute(
            text(
                "SELECT (SELECT state_change FROM pg_stat_activity WHERE pid = :pid),"
                " now()"
            ),
            {"pid": backend_pid},
        ).one()


# Step 3, the failing variant; step 4, whose concept this is; step 6, the
# first with two engines; step 9, the last. The multiprocessing drill below
# runs every step that serves as its own.
UWSGI_STEPS = [
    "step03_teardown",
    "step04_pooling",
    "step06_multiple_databases",
    "step09_app_context",
]


@pytest.mark.parametrize("step", UWSGI_STEPS)
def test_uwsgi_workers_serve_on_connections_of_their_own_from_step_4_on(
    step, make_app, databases_for, postgres, tmp_path
):
    make_app(step)
    pid_file = tmp_path / "master-backend.pid"
    uwsgi, url = serve_under_uwsgi(step, databases_for(step), pid_file)
    try:
        wait_for_http(url, uwsgi)
        master_backend = int(pid_file.read_text())
        _, load_start = server_session_of(postgres, master_backend)
        # Short timeouts: on step 3 a worker may wait for an answer that
        # another read off the shared socket.
        answers = send_load([url], CLIENTS, REQUESTS_EACH, timeout=5)
        master_used_at, _ = server_session_of(postgres, master_backend)
    finally:
        stop_uwsgi(uwsgi)

    statuses = [answer.status for answer in answers]
    # Never a 500, even on step 3's shared connection: a JSON 503 at worst.
    assert 500 not in statuses
    assert all(answer.is_json for answer in answers if answer.status is not None)
    if step == "step03_teardown":
        # The workers sent their statements on the master's connection.
        assert master_used_at > load_start
    else:
        assert statuses == [201] * CLIENTS * REQUESTS_EACH
        # The master's connection is still open, and no worker touched it.
        assert master_used_at < load_start


# multiprocessing: the app the forked workers inherit, set before they fork.
app_for_workers = None


def serve_in_worker(requests_count):
    """In a forked worker: send requests through the app, and report the
    statuses and the server session the worker's Session used."""
    client = app_for_workers.test_client()
    statuses = [
        client.post("/messages", json={"text": "from a worker"}).status_code
        for _ in range(requests_count)
    ]
    with app_for_workers.app_context():
        session = import_step(app_for_workers.import_name).db.get_session()
        backend = session.execute(select(func.pg_backend_pid())).scalar_one()
    return statuses, backend, os.getpid()


@pytest.mark.parametrize(
    ("step", "processes"),
    # Step 3's single worker: several on one shared socket might wait forever.
    [("step03_teardown", 1), *((step, 3) for step in served(STEPS_WITH_POOL_OWNER))],
)
def test_multiprocessing_fork_workers_serve_on_connections_of_their_own(
    step, processes, make_app, monkeypatch
):
    app = make_app(step)
    db = import_step(step).db
    with app.app_context():
        parent_backend = (
            db.get_session().execute(select(func.pg_backend_pid())).scalar_one()
        )
    monkeypatch.setattr(sys.modules[__name__], "app_for_workers", app)

    with multiprocessing.get_context("fork").Pool(processes) as workers:
        reports = workers.map_async(serve_in_worker, [10] * (processes * 2)).get(
            timeout=60
        )

    worker_backends = {pid: backend for _, backend, pid in reports}
    assert [statuses for statuses, _, _ in reports] == [[201] * 10] * len(reports)
    if step == "step03_teardown":
        # The worker's Session ran on the parent's server session.
        assert set(worker_backends.values()) == {parent_backend}
    else:
        # One server session per worker, none of them the parent's.
        assert parent_backend not in worker_backends.values()
        assert len(set(worker_backends.values())) == len(worker_backends)
    # The parent goes on, on the connection it had.
    with app.app_context():
        assert (
            db.get_session().execute(select(func.pg_backend_pid())).scalar_one()
            == parent_backend
        )
