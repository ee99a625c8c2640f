"""Step 4: pool settings that survive real faults, and a fresh pool after fork.

SQLAlchemy's documentation, "Dealing with Disconnects" (pre-ping, recycle,
and the optimistic approach) and "Using Connection Pools with Multiprocessing
or os.fork()". The failing variant of each concept runs on step 3.
"""

import gc
import os
import time
import weakref
from contextlib import contextmanager

import pytest
from flask.globals import request_ctx
from sqlalchemy.pool import NullPool

from testbed.fork import in_forked_child

from .faults import drop_next_returned_connection
from .steps import import_step
from .steps import pool_status
from .steps import steps_from

STEPS_WITH_POOLING = steps_from("step04_pooling")


@pytest.fixture(params=STEPS_WITH_POOLING)
def step(request):
    """Name each step with pool settings and fork safety."""
    return request.param


def test_the_pool_defaults_are_in_force(client):
    # /pool reads them from the pool itself, not from the configuration.
    assert pool_status(client)["options"] == {
        "pool_class": "QueuePool",
        "pool_pre_ping": True,
        "pool_recycle": 1800,
        "pool_size": 5,
        "max_overflow": 10,
        "pool_timeout": 10,
    }


def test_engine_options_override_one_default_and_keep_the_others(step, make_app):
    app = make_app(step, engine_options={"pool_size": 2})
    client = app.test_client()
    client.get("/messages")
    drop_next_returned_connection(app.extensions["engine"])
    client.get("/messages")

    assert pool_status(client)["size"] == 2
    # pre-ping is still on: the dropped connection goes unnoticed.
    assert client.get("/messages").status_code == 200


def test_engine_options_set_to_none_remove_defaults_for_another_pool_class(
    step, make_app
):
    # NullPool takes no pool_size, max_overflow or pool_timeout: without a
    # way to remove them, create_engine() refuses the step's defaults.
    app = make_app(
        step,
        engine_options={
            "poolclass": NullPool,
            "pool_size": None,
            "max_overflow": None,
            "pool_timeout": None,
        },
    )
    client = app.test_client()
    assert client.get("/messages").status_code == 200
    assert client.get("/messages").status_code == 200

    status = pool_status(client)
    # A connection opened per checkout; the other defaults still apply.
    assert status["connects"] == 2
    assert status["options"]["pool_class"] == "NullPool"
    assert status["options"]["pool_pre_ping"] is True
    assert status["options"]["pool_recycle"] == 1800


def test_pre_ping_replaces_a_dropped_idle_connection_unnoticed(client):
    assert client.get("/messages").status_code == 200
    drop_next_returned_connection(client.application.extensions["engine"])
    assert client.get("/messages").status_code == 200

    # The ping at checkout finds the connection dead and opens a new one.
    assert client.get("/messages").status_code == 200
    assert pool_status(client)["connects"] == 2


@pytest.mark.parametrize(
    ("step", "engine_options"),
    [
        ("step03_teardown", {}),
        *((step, {"pool_pre_ping": False}) for step in STEPS_WITH_POOLING),
    ],
)
def test_without_pre_ping_one_request_meets_the_dropped_connection(
    step, engine_options, make_app
):
    client = make_app(step, engine_options=engine_options).test_client()
    assert client.get("/messages").status_code == 200
    drop_next_returned_connection(client.application.extensions["engine"])
    assert client.get("/messages").status_code == 200

    failed = client.get("/messages")

    assert failed.status_code == 503
    assert failed.get_json()["error"].startswith("database unavailable")
    # The disconnect invalidated the pool: the next request reconnects.
    assert client.get("/messages").status_code == 200
    assert pool_status(client)["connects"] == 2


@pytest.mark.parametrize(("recycle", "replaced"), [(0.5, 1), (None, 0)])
def test_pool_recycle_replaces_connections_older_than_the_limit(
    step, make_app, recycle, replaced
):
    options = {"pool_recycle": recycle} if recycle is not None else {}
    client = make_app(step, engine_options=options).test_client()
    assert client.get("/messages").status_code == 200
    # From step 5 on the connection dates from startup, and a busy machine
    # may have taken longer than the limit to get here: count from now.
    connects = pool_status(client)["connects"]

    time.sleep(0.6)
    # Recycling acts only at checkout: nothing happened while the pool idled.
    assert pool_status(client)["connects"] == connects

    assert client.get("/messages").status_code == 200
    assert pool_status(client)["connects"] == connects + replaced


def request_and_report(client):
    """Send a request; return its status and what /pool says afterwards."""
    status = client.get("/messages").status_code
    return {"status": status, "pool": pool_status(client)}


@pytest.mark.parametrize(
    ("step", "child_connects"),
    [("step03_teardown", 1), *((step, 2) for step in STEPS_WITH_POOLING)],
)
def test_a_forked_child_opens_its_own_connection(step, child_connects, make_app):
    client = make_app(step).test_client()
    assert client.get("/messages").status_code == 200
    parent = pool_status(client)

    child = in_forked_child(lambda: request_and_report(client))

    assert child["status"] == 200
    assert child["pool"]["pid"] != parent["pid"]
    # Step 4's child opened a connection of its own (the count goes on from
    # the parent's); step 3's child used the one it inherited, which the
    # parent still holds: on a server, that is one socket for two processes.
    assert child["pool"]["connects"] == child_connects
    assert child["pool"]["connects_in_this_process"] == child_connects - 1


@contextmanager
def a_request_whose_session_holds_a_connection(app, db):
    """Run a request whose Session holds a connection, and yield the Session:
    the moment a request that starts a multiprocessing worker forks."""
    with app.test_request_context("/messages"):
        session = db.get_session()
        session.connection()
        yield session


@pytest.mark.parametrize(
    ("step", "same_session"),
    [("step03_teardown", True), *((step, False) for step in STEPS_WITH_POOLING)],
)
def test_a_child_forked_during_a_request_starts_a_session_of_its_own(
    step, same_session, make_app
):
    app = make_app(step)
    db = import_step(step).db
    with a_request_whose_session_holds_a_connection(app, db) as parent_session:

        def in_the_child():
            session = db.get_session()
            session.connection()
            counter = app.extensions["connection_counters"]["messages"]
            return {
                "same session": session is parent_session,
                "connections opened here": counter.connects[os.getpid()],
            }

        child = in_forked_child(in_the_child)

        # The parent's Session, and its transaction, go on as before.
        assert db.get_session() is parent_session
        assert parent_session.connection().closed is False

    # Step 3's child carries on in the parent's Session, on the parent's
    # connection; step 4's takes the inherited Session out of its registry,
    # unclosed, and opens a connection of its own.
    assert child == {
        "same session": same_session,
        "connections opened here": 0 if same_session else 1,
    }


@pytest.mark.parametrize(
    ("step", "left_open"),
    [("step03_teardown", False), *((step, True) for step in STEPS_WITH_POOLING)],
)
def test_a_childs_first_teardown_leaves_the_inherited_session_unclosed(
    step, left_open, make_app
):
    app = make_app(step)
    db = import_step(step).db
    with a_request_whose_session_holds_a_connection(app, db) as parent_session:

        def tear_down_in_the_child():
            # An app context of the child's own (a CLI command, a job) that
            # uses no Session: only its teardown runs.
            with app.app_context():
                pass
            return parent_session.in_transaction()

        # Step 3's teardown closes the Session the thread inherited, and its
        # rollback goes over the parent's socket; step 4's claims first.
        assert in_forked_child(tear_down_in_the_child) is left_open


@pytest.mark.parametrize(
    ("step", "left_open"),
    [("step03_teardown", False), *((step, True) for step in STEPS_WITH_POOLING)],
)
def test_a_child_that_ends_the_inherited_request_leaves_its_session_unclosed(
    step, left_open, make_app
):
    app = make_app(step)
    db = import_step(step).db
    with a_request_whose_session_holds_a_connection(app, db) as parent_session:

        def end_the_inherited_request():
            # The request the child inherited ends in the child: its teardown
            # runs in the parent's app context, the very key under which
            # step 9's registry holds the parent's Session. Only claim(),
            # which empties the registry first, keeps teardown off it.
            request_ctx._get_current_object().pop()
            return parent_session.in_transaction()

        assert in_forked_child(end_the_inherited_request) is left_open
        # The parent's request goes on in its transaction.
        assert parent_session.in_transaction()


def test_the_parent_keeps_its_connection_after_a_fork(client):
    assert client.get("/messages").status_code == 200

    in_forked_child(lambda: request_and_report(client))

    assert client.get("/messages").status_code == 200
    status = pool_status(client)
    assert status["connects"] == 1
    assert status["checked_in"] == 1


def test_nothing_process_wide_keeps_the_app_and_its_engine_alive(step, tmp_path):
    app = import_step(step).create_app(
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'collected.sqlite'}"}
    )
    engine = weakref.ref(app.extensions["engine"])

    del app
    gc.collect()

    # The fork check lives on the app, not in a process-wide registry
    # (os.register_at_fork keeps its callbacks forever): the app and its
    # engine go as usual.
    assert engine() is None
