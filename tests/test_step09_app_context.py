"""Step 9: the Session belongs to the app context, not to the thread.

Each proof runs its failing variant on step 8, whose scoped_session keys
its Sessions by thread, with the same code: an async view, an app context
nested in another, a thread the app starts. Streaming holds the Session on
both; what frees it is a pattern, shown beside the one that holds it.
"""

import asyncio
import contextlib
import gc
import importlib
import inspect
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from urllib.parse import urlsplit

import click
import pytest
import requests
from flask import Flask
from flask import current_app
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

from testbed.gunicorn import Gunicorn
from testbed.loopback import wait_for_http
from testbed.step_apps import initialize_databases
from testbed.threads import in_threads
from testbed.threads import run_in_new_thread

from .preloading import serve_under_uwsgi
from .preloading import stop_uwsgi
from .steps import SMALL_POOL
from .steps import STEPS_WITH_APP_CONTEXT_SCOPE
from .steps import import_step
from .steps import message_class
from .streams import add_streams

STEP = "step09_app_context"
# The step before, keyed by thread: each proof's failing variant.
THREAD_SCOPED = "step08_pgbouncer"
# Two connections, no overflow, and a request that finds none free within
# half a second gives up with a 503.
SMALL_POOL_FAILING_FAST = {**SMALL_POOL, "pool_timeout": 0.5}
QUEUEPOOL_LIMIT = "QueuePool limit of size 2 overflow 0 reached"


@pytest.fixture(params=STEPS_WITH_APP_CONTEXT_SCOPE)
def step(request):
    """Name each step whose Sessions belong to the app context."""
    return request.param


def step_db(app):
    """Return the db module of the app's step."""
    return importlib.import_module(f"{app.import_name}.db")


@contextlib.contextmanager
def garbage_collector_off():
    """Run the block with the cyclic garbage collector off, so that nothing
    gives back a connection that its owner did not."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def checked_out(app):
    """Return how many connections of the app's main pool are in use.

    Read from the pool, not through GET /pool: a request sent while a
    stream holds its app context would run inside that context.
    """
    return app.extensions["engine"].pool.checkedout()


# 1. Async views


def add_async_read(app):
    """Add step 9's async read of the messages to an app, as /async-messages."""
    db = step_db(app)

    async def read_messages_async():
        Message = db.get_models().Message
        messages = db.get_session().scalars(select(Message).order_by(Message.id))
        return [message.to_dict() for message in messages]

    app.add_url_rule("/async-messages", view_func=read_messages_async)


def test_the_step_serves_its_list_of_messages_from_an_async_view(make_app, step):
    app = make_app(step)

    assert inspect.iscoroutinefunction(app.view_functions["messages.list_messages"])


def test_async_requests_give_their_connection_back_without_the_garbage_collector(
    make_app, step
):
    app = make_app(step, engine_options=SMALL_POOL_FAILING_FAST)
    client = app.test_client()
    client.post("/messages", json={"text": "read asynchronously"})

    with garbage_collector_off():
        answers = []
        for _ in range(20):
            response = client.get("/messages")
            answers.append((response.status_code, checked_out(app)))

    # Ten times the pool, and every connection back after each request.
    assert answers == [(200, 0)] * 20


def test_on_step_8_each_async_request_keeps_its_connection_until_collected(
    make_app,
):
    app = make_app(THREAD_SCOPED, engine_options=SMALL_POOL_FAILING_FAST)
    add_async_read(app)
    client = app.test_client()

    with garbage_collector_off():
        answers = []
        for _ in range(4):
            response = client.get("/async-messages")
            answers.append((response.status_code, checked_out(app)))
        # The view's Session belongs to the thread Flask made for the call;
        # teardown, on the request's thread, removed that thread's instead.
        assert answers == [(200, 1), (200, 2), (503, 2), (503, 2)]
        assert QUEUEPOOL_LIMIT in response.get_json()["error"]

    # What gives them back: the garbage collector, whenever it runs.
    gc.collect()
    assert checked_out(app) == 0


def get_at_once_from_threads(url, path, clients=20, requests_each=10):
    """GET ``path`` from ``clients`` threads at once; return (status, body)s."""

    def client(number, stop):
        with requests.Session() as http:
            answers = []
            for _ in range(requests_each):
                response = http.get(url + path, timeout=30)
                answers.append((response.status_code, response.json()))
            return answers

    return [answer for answers in in_threads(client, clients) for answer in answers]


def add_where_it_runs(app):
    """Add /where-it-runs, an async view that names the thread it runs on;
    return the event loops it ran in, one per call."""
    loops = []

    @app.get("/where-it-runs")
    async def where_it_runs():
        loops.append(asyncio.get_running_loop())
        return {"thread": threading.get_ident()}

    return loops


def test_an_async_view_runs_on_the_requests_thread_in_an_event_loop_of_its_own(
    make_app, step
):
    app = make_app(step)
    loops = add_where_it_runs(app)
    client = app.test_client()

    threads = {client.get("/where-it-runs").get_json()["thread"] for _ in range(3)}

    # async_views.py: the request's thread runs no loop, so the view's runs
    # there; each call has a loop of its own, closed as the call ends.
    assert threads == {threading.get_ident()}
    assert len(set(loops)) == 3
    assert all(loop.is_closed() for loop in loops)


def test_what_an_async_view_leaves_running_is_cancelled_as_its_loop_ends(
    make_app, step
):
    app = make_app(step)
    left = []

    @app.get("/leaves-a-task")
    async def leaves_a_task():
        left.append(asyncio.get_running_loop().create_task(asyncio.sleep(60)))
        return {"left": "a task"}

    assert app.test_client().get("/leaves-a-task").status_code == 200
    # As asyncio.run() would: cancelled, not destroyed while pending.
    assert left[0].cancelled()


def test_an_async_generator_the_view_leaves_open_is_closed_as_its_loop_ends(
    make_app, step
):
    app = make_app(step)
    closed = []

    async def rows():
        try:
            yield "first"
            yield "second"
        finally:
            closed.append(True)

    @app.get("/leaves-a-generator")
    async def leaves_a_generator():
        generator = rows()
        app.extensions["left open"] = generator
        return {"first": await anext(generator)}

    assert app.test_client().get("/leaves-a-generator").get_json() == {"first": "first"}
    # As asyncio.run() would: its finally ran on the view's loop, before the
    # loop closed, not later in whichever loop the collector finds it.
    assert closed == [True]


def test_with_flasks_default_an_async_view_runs_on_a_thread_made_for_the_call(
    make_app,
):
    app = make_app(THREAD_SCOPED)
    loops = add_where_it_runs(app)

    answer = app.test_client().get("/where-it-runs").get_json()

    # asgiref's async_to_sync: a new thread and loop for each call, while
    # the request's thread waits. What a thread-scoped Session loses.
    assert answer["thread"] != threading.get_ident()
    assert loops[0].is_closed()


def mixed_requests_over_http(url, clients, requests_each):
    """Send ``clients`` threads' mixed requests to a server: of each three,
    one GET /messages (the async view), one POST /messages, one GET of the
    client's last message. Each on a connection of its own, as uWSGI's
    http-socket keeps none open. Return every (method, URL, response)."""

    def client(number, stop):
        answers = []
        last = 1
        for count in range(requests_each):
            if stop.is_set():
                break
            if count % 3 == 0:
                response = requests.get(url + "/messages", timeout=30)
            elif count % 3 == 1:
                text = f"client {number}, message {count}"
                response = requests.post(
                    url + "/messages", json={"text": text}, timeout=30
                )
                if response.status_code == 201:
                    last = response.json()["id"]
            else:
                response = requests.get(f"{url}/messages/{last}", timeout=30)
            answers.append((response.request.method, response.url, response))
        return answers

    return [answer for answers in in_threads(client, clients) for answer in answers]


def serve_under_gevent(app, databases, log_path, *options, step=STEP, env=None):
    """Start ``app`` (a module:variable) under one gevent worker of 100
    greenlets, on the step's initialized databases."""
    initialize_databases(import_step(step).create_app, databases)
    return Gunicorn(
        app,
        # Stopped once every request has its answer: no need to wait 30 s
        # for stragglers.
        [
            *("--worker-class", "gevent", "--workers", "1"),
            *("--graceful-timeout", "1", *options),
        ],
        {**databases, **(env or {})},
        log_path,
    )


# asgiref's event loop and gevent's greenlets: not the scope's doing, and
# the same on any database: Flask's default way of running async views.
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_without_async_views_py_under_gevent_async_requests_at_once_answer_503(
    databases_for, tmp_path
):
    with serve_under_gevent(
        "tests.default_async_app:app",
        databases_for(STEP),
        tmp_path / "gunicorn.log",
        "--worker-connections=50",
    ) as gunicorn:
        requests.post(gunicorn.url + "/messages", json={"text": "one"}, timeout=30)
        async_answers = get_at_once_from_threads(gunicorn.url, "/messages")
        sync_answers = get_at_once_from_threads(gunicorn.url, "/messages/1")
        log = gunicorn.log()

    # gevent's patched threads are greenlets of one thread: an async view
    # that starts while another's event loop runs there is refused by
    # asgiref. The app answers 503, never a 500; the sync view is unharmed.
    assert {status for status, _ in async_answers} == {200, 503}, log[-3000:]
    refused = [body for status, body in async_answers if status == 503]
    assert {body["error"] for body in refused} == {
        "request failed (RuntimeError): try again"
    }
    assert "You cannot use AsyncToSync in the same thread as an async event loop" in (
        log
    )
    assert {status for status, _ in sync_answers} == {200}


# The steps' own async_views.py: each view's loop on a native thread of
# gevent's pool. The load (12 clients, 40 mixed requests each), on
# the servers where the failures were seen and on MariaDB.
GEVENT_CLIENTS = 12
GEVENT_REQUESTS_EACH = 12


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
@pytest.mark.parametrize("preload", [False, True], ids=["own-load", "preload"])
def test_under_gevent_every_request_is_answered_async_views_included(
    step, backend, preload, databases_for, tmp_path
):
    with serve_under_gevent(
        f"{step}.wsgi:app",
        databases_for(step),
        tmp_path / "gunicorn.log",
        "--worker-connections=100",
        *(["--preload"] if preload else []),
        step=step,
    ) as gunicorn:
        answers = mixed_requests_over_http(
            gunicorn.url, GEVENT_CLIENTS, GEVENT_REQUESTS_EACH
        )
        log = gunicorn.log()

    failed = [
        (method, url, response.status_code, response.text[:200])
        for method, url, response in answers
        if response.status_code >= 500
    ]
    assert failed == [], log[-3000:]
    assert len(answers) == GEVENT_CLIENTS * GEVENT_REQUESTS_EACH
    lists = [
        response
        for method, url, response in answers
        if method == "GET" and url.endswith("/messages")
    ]
    assert len(lists) == GEVENT_CLIENTS * GEVENT_REQUESTS_EACH // 3
    assert {response.status_code for response in lists} == {200}
    assert "AsyncToSync" not in log


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_under_gevent_an_async_view_runs_on_the_workers_thread_and_fails_as_sync_ones(
    step, databases_for, tmp_path
):
    with serve_under_gevent(
        "tests.gevent_app:app",
        databases_for(step),
        tmp_path / "gunicorn.log",
        step=step,
        env={"GEVENT_APP_STEP": step},
    ) as gunicorn:
        where = requests.get(gunicorn.url + "/gevent/async-thread", timeout=30).json()
        failed = requests.get(gunicorn.url + "/gevent/async-fails", timeout=30)
        not_found = requests.get(
            gunicorn.url + "/gevent/async-fails?status=404", timeout=30
        )

    # The worker's main thread (its native id is the process's), where the
    # hub runs the greenlets and made their pooled connections.
    assert where["native_thread"] == where["pid"]
    # What the view raised reaches the app's error handlers, as a sync
    # view's would: a 503 that names the error, and an abort()'s 404.
    assert failed.status_code == 503
    assert failed.json() == {"error": "request failed (RuntimeError): try again"}
    assert not_found.status_code == 404
    assert not_found.headers["Content-Type"] == "application/json"


# And with threads: each request's thread runs its view's loop.
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("server", ["gunicorn-gthread", "uwsgi"])
def test_under_threads_every_request_is_answered_async_views_included(
    step, server, databases_for, tmp_path
):
    databases = databases_for(step)
    initialize_databases(import_step(step).create_app, databases)
    with contextlib.ExitStack() as stack:
        if server == "uwsgi":
            # Its defaults, 3 processes of 4 threads, the app preloaded.
            uwsgi, url = serve_under_uwsgi(step, databases, tmp_path / "pid")
            stack.callback(stop_uwsgi, uwsgi)
            wait_for_http(url, uwsgi)
        else:
            # 2 workers of 4 threads, each loading the app itself.
            options = ["--worker-class", "gthread", "--workers", "2", "--threads", "4"]
            gunicorn = Gunicorn(f"{step}.wsgi:app", options, databases)
            url = stack.enter_context(gunicorn).url
        answers = mixed_requests_over_http(url, GEVENT_CLIENTS, GEVENT_REQUESTS_EACH)

    assert len(answers) == GEVENT_CLIENTS * GEVENT_REQUESTS_EACH
    assert [
        (method, url, response.status_code)
        for method, url, response in answers
        if response.status_code >= 500
    ] == []
    lists = [
        response.status_code
        for method, url, response in answers
        if method == "GET" and urlsplit(url).path == "/messages"
    ]
    assert lists == [200] * (GEVENT_CLIENTS * GEVENT_REQUESTS_EACH // 3)


# uWSGI serves on each worker's main thread too, where asyncio.run() sets a
# SIGINT handler of Python's for the call: it stays in place of uWSGI's.
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("module", "stops"),
    [
        (f"{STEP}.wsgi:app", True),
        ("tests.asyncio_run_app:app", False),
    ],
    ids=["async_views.py", "asyncio.run"],
)
def test_under_uwsgi_a_worker_that_ran_an_async_view_still_stops_on_sigint(
    module, stops, databases_for, tmp_path
):
    databases = databases_for(STEP)
    initialize_databases(import_step(STEP).create_app, databases)
    # One worker, no threads: the request runs on the worker's main thread.
    uwsgi, url = serve_under_uwsgi(
        STEP, databases, tmp_path / "pid", module=module, threads=False
    )
    try:
        wait_for_http(url, uwsgi)
        assert requests.get(url + "/messages", timeout=30).status_code == 200
    finally:
        # uWSGI's master waits for its workers; a worker that ignores
        # SIGINT keeps it waiting until it is killed.
        ended = stop_uwsgi(uwsgi, seconds=5)

    assert (ended != -signal.SIGKILL) == stops


# Why not a thread of gevent's pool, where each loop would run apart and
# concurrently: gevent's sockets belong to the thread that made them.
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mariadb"])
def test_under_gevent_on_a_native_thread_pymysqls_pooled_connections_fail(
    databases_for, tmp_path
):
    with serve_under_gevent(
        "tests.native_thread_async_app:app",
        databases_for(STEP),
        tmp_path / "gunicorn.log",
        "--worker-connections=100",
    ) as gunicorn:
        answers = mixed_requests_over_http(
            gunicorn.url, GEVENT_CLIENTS, GEVENT_REQUESTS_EACH
        )
        log = gunicorn.log()

    # A connection that a greenlet opened on the worker's thread, then used
    # by a view's loop on another: greenlet refuses to switch to the hub of
    # a thread that is not the current one. The app answers 503, not 500.
    failed = [
        (method, urlsplit(url).path, response.status_code)
        for method, url, response in answers
        if response.status_code >= 500
    ]
    assert failed, log[-3000:]
    assert {status for _, _, status in failed} == {503}, log[-3000:]
    assert ("GET", "/messages", 503) in failed
    assert "greenlet.error: Cannot switch to a different thread" in log


def test_in_the_articles_app_an_async_view_runs_the_pool_dry_with_a_500(tmp_path):
    # The article's technique as it stands: a module-level engine, a
    # thread-scoped scoped_session removed on teardown, no error handlers.
    engine = create_engine(
        f"sqlite:///{tmp_path / 'article.sqlite'}", **SMALL_POOL_FAILING_FAST
    )
    session = scoped_session(sessionmaker(bind=engine))
    app = Flask("the_articles_app")
    app.teardown_appcontext(lambda exception: session.remove())

    @app.get("/async")
    async def read_async():
        return {"one": session.execute(text("SELECT 1")).scalar()}

    client = app.test_client()
    with garbage_collector_off():
        statuses = [client.get("/async").status_code for _ in range(3)]
        assert engine.pool.checkedout() == 2

    assert statuses == [200, 200, 500]
    engine.dispose()


def test_isolated_app_admits_the_async_views_of_its_requests(make_app, step):
    app = make_app(step)
    isolated = import_step(f"{step}.testing").isolated

    with isolated(app):
        client = app.test_client()
        created = client.post("/messages", json={"text": "inside the block"})
        # The async view runs in a thread of its own, with the block's
        # context variables: it reads the block's uncommitted write.
        assert client.get("/messages").get_json() == [created.get_json()]

    assert app.test_client().get("/messages").get_json() == []


def test_a_block_leaves_the_threads_context_variables_as_it_found_them(make_app, step):
    app = make_app(step)
    testing = import_step(f"{step}.testing")
    its_variables = [
        value for value in vars(testing).values() if isinstance(value, ContextVar)
    ]
    before = {variable: variable.get() for variable in its_variables}

    with testing.isolated(app):
        assert app.test_client().get("/messages").status_code == 200

    # Nothing of the block is left in the thread's context: a test runner's
    # thread that runs a thousand tests keeps no thousand blocks.
    assert its_variables
    assert {variable: variable.get() for variable in its_variables} == before


def test_on_step_8_isolated_app_refuses_an_async_views_thread(make_app):
    app = make_app(THREAD_SCOPED)
    add_async_read(app)
    testing = import_step(f"{THREAD_SCOPED}.testing")

    with testing.isolated(app), pytest.raises(testing.IsolationError):
        app.test_client().get("/async-messages")


# 2. Nested app contexts


def write_with_a_nested_app_context(db):
    """Add a message, run a helper in an app context of its own, commit.

    As a helper that pushes a context for its own work does, inside a
    request or a CLI command. Return the texts stored after.
    """
    session = db.get_session()
    session.add(db.get_models().Message(text="added before the nested context"))
    with current_app.app_context():
        db.get_session().execute(text("SELECT 1"))
    session.commit()
    Message = db.get_models().Message
    return list(db.get_session().scalars(select(Message.text)))


def add_nested_writes(app):
    """Add the nested write as a route and as a CLI command."""
    db = step_db(app)

    @app.post("/nested")
    def nested_in_a_request():
        return {"stored": write_with_a_nested_app_context(db)}

    @app.cli.command("nested")
    def nested_in_a_command():
        click.echo(json.dumps(write_with_a_nested_app_context(db)))


def run_nested_write(app, where):
    """Run the nested write in a request or a CLI command; return what it stored."""
    if where == "request":
        return app.test_client().post("/nested").get_json()["stored"]
    result = app.test_cli_runner().invoke(args=["nested"])
    assert result.exception is None, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("where", ["request", "command"])
def test_a_nested_app_context_leaves_the_outer_sessions_work_alone(
    make_app, where, step
):
    app = make_app(step)
    add_nested_writes(app)

    assert run_nested_write(app, where) == ["added before the nested context"]


@pytest.mark.parametrize("where", ["request", "command"])
def test_on_step_8_a_nested_app_context_loses_the_outer_sessions_work(make_app, where):
    app = make_app(THREAD_SCOPED)
    add_nested_writes(app)

    # The inner context's teardown removed the thread's Session, with the
    # message it held; commit() then had nothing to write, and said nothing.
    assert run_nested_write(app, where) == []


def test_nested_app_contexts_each_have_a_session_and_teardown_closes_the_inner(
    make_app, step
):
    app = make_app(step)
    registry = app.extensions["session"]
    Message = message_class(app)

    with app.app_context():
        outer = registry()
        pending = Message(text="pending in the outer Session")
        outer.add(pending)
        with app.app_context():
            inner = registry()
            inner.execute(text("SELECT 1"))
        assert inner is not outer
        assert registry() is outer
        assert pending in outer
        assert checked_out(app) == 0
    # Each context's teardown closed its own Session.
    assert pending not in outer
    assert checked_out(app) == 0


# 4. Streaming


def app_with_streams(make_app, step):
    """Return an app with the streaming routes and three messages."""
    app = make_app(step)
    add_streams(app)
    for number in range(3):
        app.test_client().post("/messages", json={"text": f"line {number}"})
    return app


def start_stream(app, path):
    """Start a stream; return the response, its body's iterator, the first line."""
    response = app.test_client().get(path)
    body = iter(response.response)
    return response, body, next(body)


@pytest.mark.parametrize("step", [*STEPS_WITH_APP_CONTEXT_SCOPE, THREAD_SCOPED])
def test_a_stream_of_the_views_own_query_fails_its_teardown_ran_first(make_app, step):
    app = app_with_streams(make_app, step)

    # Flask 3.1 tears the app context down as the view returns, and pushes
    # it again for the stream: the view's Session is closed by then.
    with pytest.raises(InvalidRequestError, match="Has the owning Session been closed"):
        start_stream(app, "/stream/from-the-view")
    assert checked_out(app) == 0


@pytest.mark.parametrize("step", [*STEPS_WITH_APP_CONTEXT_SCOPE, THREAD_SCOPED])
def test_a_stream_that_queries_holds_a_connection_until_it_ends_or_is_closed(
    make_app, step
):
    app = app_with_streams(make_app, step)

    response, body, first = start_stream(app, "/stream/as-read")
    assert first == b"line 0\n"
    # The stream's Session, of the context pushed again for it, holds its
    # connection for as long as the stream runs, whatever the scope.
    assert checked_out(app) == 1
    # A client that goes away: the server closes the body, the context
    # ends, and its teardown gives the connection back.
    response.close()
    assert checked_out(app) == 0


def test_a_stream_that_reads_first_and_closes_the_session_holds_none(make_app, step):
    app = app_with_streams(make_app, step)

    response, body, first = start_stream(app, "/stream/read-first")

    assert first == b"line 0\n"
    assert checked_out(app) == 0
    assert list(body) == [b"line 1\n", b"line 2\n"]
    response.close()
    assert checked_out(app) == 0


@contextlib.contextmanager
def stream_over_http(url, path):
    """Open a stream over HTTP and yield its first line of body; hang up
    after the block, without reading the rest, as a client that leaves."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as raw:
        raw.sendall(f"GET {path} HTTP/1.1\r\nHost: {address.netloc}\r\n\r\n".encode())
        received = b""
        while b"line 0\n" not in received:
            chunk = raw.recv(4096)
            assert chunk, received
            received += chunk
        yield received.partition(b"\r\n\r\n")[2]


def wait_for(condition, seconds=10):
    """Wait until ``condition()`` holds, at most ``seconds``; return whether it did."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


STREAMED_MESSAGES = 60


@pytest.fixture
def served_streams(databases_for, tmp_path):
    """Serve step 9 with the streaming routes under gunicorn (threads, so
    that /pool answers while a stream runs), with messages to stream; yield
    the server and functions that read /pool and /stream/ended."""
    databases = databases_for(STEP)
    initialize_databases(import_step(STEP).create_app, databases)
    with (
        Gunicorn(
            "tests.streaming_app:app",
            ["--worker-class", "gthread", "--threads", "4", "--workers", "1"],
            databases,
            tmp_path / "gunicorn.log",
        ) as gunicorn,
        requests.Session() as http,
    ):
        for number in range(STREAMED_MESSAGES):
            http.post(gunicorn.url + "/messages", json={"text": f"line {number}"})

        def checked_out_there():
            return http.get(gunicorn.url + "/pool", timeout=10).json()["checked_out"]

        def lines_sent():
            return http.get(gunicorn.url + "/stream/ended", timeout=10).json()[
                "lines_sent"
            ]

        yield gunicorn, checked_out_there, lines_sent


# What each stream holds while it runs: a connection, or none.
STREAMS_UNDER_GUNICORN = [("/stream/as-read", 1), ("/stream/read-first", 0)]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "held"), STREAMS_UNDER_GUNICORN)
def test_under_gunicorn_a_client_that_hangs_up_ends_the_stream_and_its_session(
    served_streams, path, held
):
    gunicorn, checked_out_there, lines_sent = served_streams

    with stream_over_http(gunicorn.url, path) as first:
        assert b"line 0\n" in first
        assert checked_out_there() == held

    # gunicorn's next writes fail, and it closes the body: the stream ends
    # early, and its app context with it, whose teardown gives any
    # connection back.
    assert wait_for(lambda: lines_sent() != []), gunicorn.log()
    [sent] = lines_sent()
    assert sent < STREAMED_MESSAGES
    assert wait_for(lambda: checked_out_there() == 0)


# 5. Threads the app starts


def add_background_job(app):
    """Add a route that hands a job to an executor thread, with the app."""
    db = step_db(app)

    def job(app):
        # The thread has no app context: it pushes one of its own, whose
        # teardown gives its Session's connection back.
        with app.app_context():
            session = db.get_session()
            session.add(db.get_models().Message(text="written by the job"))
            session.commit()
            return id(session)

    @app.post("/jobs")
    def run_a_job():
        request_session = db.get_session()
        with ThreadPoolExecutor(max_workers=1) as executor:
            job_session = executor.submit(job, current_app._get_current_object())
            return {"own_session": job_session.result() != id(request_session)}


def test_a_thread_the_app_starts_has_its_own_session_in_its_own_app_context(
    make_app, step
):
    app = make_app(step)
    add_background_job(app)
    client = app.test_client()

    with garbage_collector_off():
        assert client.post("/jobs").get_json() == {"own_session": True}
        assert checked_out(app) == 0
    assert [message["text"] for message in client.get("/messages").get_json()] == [
        "written by the job"
    ]


def test_a_thread_without_an_app_context_is_refused_a_session(make_app, step):
    app = make_app(step)

    def without_a_context():
        with pytest.raises(RuntimeError, match="outside of application context"):
            app.extensions["session"]()
        return True

    assert run_in_new_thread(without_a_context)


def test_on_step_8_a_thread_without_an_app_context_keeps_a_connection(make_app):
    app = make_app(THREAD_SCOPED)
    registry = app.extensions["session"]

    with ThreadPoolExecutor(max_workers=1) as executor:
        # The thread gets a Session of its own, that nothing removes: its
        # connection stays checked out for as long as the thread lives.
        executor.submit(lambda: registry().execute(text("SELECT 1"))).result()
        assert checked_out(app) == 1
        gc.collect()
        assert checked_out(app) == 1
        executor.submit(registry.remove).result()
    assert checked_out(app) == 0
