"""What the tests share besides fixtures: the steps, live servers, small helpers."""

import importlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import requests
from sqlalchemy import event
from sqlalchemy import text

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Every step package in the repository, so that a new step joins the shared
# suite by existing.
STEPS = sorted(
    path.name
    for path in ROOT.glob("step[0-9][0-9]_*")
    if (path / "__init__.py").is_file()
)

# The pool of the load tests: two connections, no overflow.
SMALL_POOL = {"pool_size": 2, "max_overflow": 0}


def steps_from(first):
    """Return the steps that keep the concept ``first`` introduced."""
    return [step for step in STEPS if step >= first]


# The steps whose app has a second database, for its audit log.
STEPS_WITH_TWO_DATABASES = steps_from("step06_multiple_databases")


def connections_opened_at_startup(step):
    """Return how many connections creating the step's app opens: its pool's
    first, from step 5 on, where the app maps its models from the database."""
    return 1 if step in steps_from("step05_reflection") else 0


def message_class(app):
    """Return the app's mapped Message class.

    Steps 2 to 4 declare it once, in their models module; from step 5 on,
    each app maps a class of its own from its database's tables.
    """
    if "models" in app.extensions:
        return app.extensions["models"].get().Message
    return importlib.import_module(f"{app.import_name}.models").Message


def import_step(step):
    """Import a step package by name."""
    return importlib.import_module(step)


def dispose_engines(app):
    """Close every pooled connection of the app's engines."""
    for name in ("engine", "audit_engine"):
        if name in app.extensions:
            app.extensions[name].dispose()


def databases_in(env):
    """Return the database URLs among a step's environment variables."""
    return {
        key: env[key] for key in ("DATABASE_URL", "AUDIT_DATABASE_URL") if key in env
    }


def initialize_databases(step, databases):
    """Run a step's ``flask init-db`` on its databases, in this process.

    It runs through the CLI of an app of its own, whose pools are closed
    after, so that the app or server under test starts with untouched pools.
    """
    initializer = import_step(step).create_app(databases)
    result = initializer.test_cli_runner().invoke(args=["init-db"])
    assert result.output == "Initialized the database.\n", result.output
    dispose_engines(initializer)


def pool_status(client):
    """Return what ``GET /pool`` answers."""
    response = client.get("/pool")
    assert response.status_code == 200
    return response.get_json()


def run_in_new_thread(function):
    """Run ``function`` in a new thread, wait for it, and return its result."""
    results = []
    thread = threading.Thread(target=lambda: results.append(function()))
    thread.start()
    thread.join()
    return results[0]


def lose_connection_before(engine, statement_start):
    """Close the DBAPI connection under the next statement that starts so.

    The statement then fails as it would on a connection the server dropped
    in the middle of a request: SQLAlchemy sees a disconnect.
    """

    closed = []

    def close_connection(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith(statement_start) and not closed:
            conn.connection.dbapi_connection.close()
            closed.append(statement)

    event.listen(engine, "before_cursor_execute", close_connection)


def lose_connection_at_next_rollback(engine):
    """Close the DBAPI connection just before the next rollback is sent.

    As if the server went away after the request's last statement: the
    rollback that teardown sends fails, on a disconnect.
    """

    def close_connection(conn):
        conn.connection.dbapi_connection.close()

    event.listen(engine, "rollback", close_connection, once=True)


def drop_next_returned_connection(engine):
    """Close the next connection returned to the pool, as a server would.

    It waits in the pool, dead, for the next checkout: what an idle timeout
    or a server restart leaves behind.
    """
    event.listen(
        engine.pool,
        "checkin",
        lambda dbapi_connection, record: dbapi_connection.close(),
        once=True,
    )


def send_from_threads(app, threads, requests, path="/messages"):
    """Send GET requests from long-lived threads, as a pooled server would.

    Each thread sends up to ``requests`` requests and stops at its first
    failure; an exception in any thread stops them all (in_threads). Return
    each thread's responses: (status, error) pairs.
    """

    def work(number, stop):
        outcome = []
        client = app.test_client()
        for _ in range(requests):
            if stop.is_set():
                break
            response = client.get(path)
            outcome.append(
                (
                    response.status_code,
                    response.get_json().get("error")
                    if response.status_code != 200
                    else None,
                )
            )
            if response.status_code != 200:
                break
        return outcome

    return in_threads(work, threads)


def in_threads(work, threads):
    """Run ``work(number, stop)`` in this many threads at once; return what
    each returned.

    ``stop`` is an Event for ``work`` to check between requests. The first
    exception in a thread sets it, and so does one in this thread as it
    waits (a test's timeout): the other threads end after their current
    request, rather than run on and keep the run from ending. Every thread
    is joined before this returns; then a thread's exception is raised here.
    """
    stop = threading.Event()
    results = [None] * threads
    errors = []

    def run(number):
        try:
            results[number] = work(number, stop)
        except BaseException as error:
            errors.append(error)
            stop.set()

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        stop.set()
        for worker in workers:
            if worker.ident is not None:
                worker.join()
    if errors:
        raise errors[0]
    return results


def read_from_snapshots(engine):
    """Make the engine's transactions read from a snapshot.

    A transaction then sees the database as it was at its first read, as
    MySQL's do by default (REPEATABLE READ). PostgreSQL does so at REPEATABLE
    READ. SQLite does in WAL mode, once a transaction really begins: by
    itself, Python's sqlite3 starts none for a SELECT, so the engine emits
    BEGIN, the recipe of SQLAlchemy's SQLite dialect documentation
    ("Serializable isolation / Savepoints / Transactional DDL").
    """
    if engine.dialect.name == "postgresql":

        def on_begin(connection):
            connection.exec_driver_sql(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
            )

    else:

        def on_connect(dbapi_connection, connection_record):
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

        def on_begin(connection):
            connection.exec_driver_sql("BEGIN")

        event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)


def change_text_elsewhere(engine, message_id, new_text):
    """Change a message through a connection of its own, as another process would."""
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE messages SET text = :text WHERE id = :id"),
            {"text": new_text, "id": message_id},
        )


def read_again_after_a_change_elsewhere(client):
    """Read a message, change it through another connection, read it again.

    Return the text the second read sees: "original" or "changed". Reads
    come from snapshots, so a transaction still open from the first read
    would serve the original text.
    """
    engine = client.application.extensions["engine"]
    read_from_snapshots(engine)
    message = client.post("/messages", json={"text": "original"}).get_json()
    assert client.get(f"/messages/{message['id']}").get_json()["text"] == "original"

    change_text_elsewhere(engine, message["id"], "changed")

    return client.get(f"/messages/{message['id']}").get_json()["text"]


def in_forked_child(function):
    """Run ``function`` in a forked child process and return its result.

    The result travels back as JSON through a pipe; the child then leaves
    at once, without running the parent's cleanup (pytest's included).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            report = {"result": function()}
        except BaseException:
            report = {"error": traceback.format_exc()}
        try:
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        report = json.loads(reader.read())
    os.waitpid(pid, 0)
    assert "error" not in report, f"in the forked child: {report['error']}"
    return report["result"]


def delete_elsewhere_before(engine, statement_start, message_id):
    """Delete a message through another connection just before a statement.

    As if another request deleted it while this one ran: after this
    request read the row and before it wrote.
    """
    deleted = []

    def delete_first(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith(statement_start) and not deleted:
            deleted.append(statement)
            with engine.begin() as other:
                other.execute(
                    text("DELETE FROM messages WHERE id = :id"), {"id": message_id}
                )

    event.listen(engine, "before_cursor_execute", delete_first)


class LiveServer:
    """A step served by a real ``flask run`` on a free loopback port."""

    def __init__(self, step, env, log_path, init_db=True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        if init_db:
            # Here rather than in a process of its own, which would import
            # Flask and SQLAlchemy once more: a second, or three on a busy
            # machine, for every server a test starts.
            initialize_databases(step, databases_in(env))
        flask = [sys.executable, "-m", "flask", "--app", step]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*flask, "run", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_http(self.url, self.process, log_path=log_path)
        except BaseException:
            self.stop()
            raise

    def get(self, path, **kwargs):
        """Send a GET request to the server."""
        return requests.get(self.url + path, **{"timeout": 30, **kwargs})

    def post(self, path, **kwargs):
        """Send a POST request to the server."""
        return requests.post(self.url + path, **{"timeout": 30, **kwargs})

    def log(self):
        """Return what the server has printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self):
        """Stop the server and wait for it to exit."""
        stop_process(self.process, seconds=10)


def stop_process(process, stop_signal=signal.SIGTERM, seconds=30):
    """Send a process its stop signal and wait; kill it if it lingers."""
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def preloaded_environment(databases, pid_file, step="step04_pooling"):
    """Return the environment of a server that preloads tests/preloaded_app.py:
    the step, its databases, and where the master's server pid goes."""
    return {
        **os.environ,
        **databases,
        "PRELOAD_STEP": step,
        "PRELOAD_BACKEND_PID_FILE": str(pid_file),
    }


def free_port():
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url, process, seconds=30, log_path=None):
    """Wait until a server answers, or fail if its process exits (with what
    it logged to ``log_path``, if given)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = pathlib.Path(log_path).read_text(errors="replace") if log_path else ""
            raise AssertionError(f"the server exited\n{log}")
        try:
            requests.get(url + "/pool", timeout=1)
            return
        # Refused: nothing listens yet. Timed out: it listens, but its
        # workers are still starting, as on a busy machine they may be.
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {seconds}s")


class QueryWatcher:
    """Run a query every ``interval`` seconds on a connection of its own, in a
    thread, while a ``with`` block runs; a subclass records the rows.

    The connection opens as the watcher is created, before any load, so
    that it never waits for a free slot on a full server.
    """

    def __init__(self, engine, query, parameters, interval):
        self._engine = engine
        self._query = text(query)
        self._parameters = parameters
        self.interval = interval
        self._connection = engine.connect()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self._connection.close()
        self._engine.dispose()

    def _watch(self):
        while not self._stop.is_set():
            self.record(self._connection.execute(self._query, self._parameters).all())
            time.sleep(self.interval)

    def record(self, rows):
        """Take note of one sample's rows."""
        raise NotImplementedError
