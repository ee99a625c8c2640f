"""What the notebooks share: an app on a throwaway database, load, timing, charts.

The notebooks import this module from their own folder, where Jupyter starts
their kernel. Everything a notebook is about stays in the notebook; what is
here only sets the stage and draws.
"""

import atexit
import contextlib
import html
import importlib
import logging
import multiprocessing
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
import warnings

import matplotlib.pyplot as plt
from IPython.display import HTML
from IPython.display import display
from matplotlib.ticker import MaxNLocator
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.pool import NullPool

_folder = tempfile.mkdtemp(prefix="flask-sqlalchemy-notebook-")
atexit.register(shutil.rmtree, _folder, ignore_errors=True)


def harness(name):
    """Import and return a module of the test suite's harness, ``tests/<name>.py``.

    What the tests use to start real processes (a throwaway PostgreSQL,
    PgBouncer, gunicorn) serves a notebook too. ``tests`` is no installed
    package: the repository's root, one folder up, goes on ``sys.path``.
    """
    root = pathlib.Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.append(str(root))
    module = importlib.import_module(f"tests.{name}")
    if not pathlib.Path(module.__file__).resolve().is_relative_to(root / "tests"):
        raise ImportError(f"tests.{name} is not this repository's: {module.__file__}")
    return module


# What on_kernel_stop() was given, run in reverse order when the kernel stops,
# and last this kernel's folder, which a SIGTERM would leave behind.
_at_kernel_stop = contextlib.ExitStack()
_at_kernel_stop.callback(shutil.rmtree, _folder, ignore_errors=True)


def on_kernel_stop(callback):
    """Call ``callback`` when the kernel stops, whichever way Jupyter stops it.

    For processes a notebook starts that outlive it, such as a server. A
    kernel asked to shut down may not exit by itself: ipykernel first waits
    for its child processes to go, and a child that exited but was never
    waited for is still listed. Jupyter then sends it SIGTERM, which ends
    Python without running ``atexit`` hooks. So the callbacks run at exit,
    or on SIGTERM, before the kernel dies of it; each runs once.
    """
    if signal.getsignal(signal.SIGTERM) is not _stop_on_sigterm:
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    _at_kernel_stop.callback(callback)


def _stop_on_sigterm(signum, frame):
    try:
        _at_kernel_stop.close()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


atexit.register(_at_kernel_stop.close)


def database_url():
    """Return ``DATABASE_URL`` if it is set, else a SQLite file of this kernel's."""
    return os.environ.get("DATABASE_URL") or f"sqlite:///{_folder}/notebook.sqlite"


def audit_database_url():
    """Return ``AUDIT_DATABASE_URL`` if it is set, else a second SQLite file
    of this kernel's: from step 6 on, the app keeps an audit log there."""
    return (
        os.environ.get("AUDIT_DATABASE_URL")
        or f"sqlite:///{_folder}/notebook-audit.sqlite"
    )


def new_app(create_app, engine_options=None, init_db=True):
    """Create a step's app on the notebook's databases, its pools still empty.

    Steps before 6 have no audit database and ignore its URL. With
    ``init_db=False`` the database is left as it is.
    """
    databases = {
        "DATABASE_URL": database_url(),
        "AUDIT_DATABASE_URL": audit_database_url(),
    }
    # The app logs a traceback with every 503, and from step 5 on a warning
    # when it starts before init-db; the notebooks show the 503s and what
    # init-db changes themselves, so keep the logs out of the cells' output.
    logging.getLogger(create_app.__module__).setLevel(logging.ERROR)
    if init_db:
        # init-db runs in an app of its own, so that the app the notebook
        # looks at has opened no connection yet (from step 5 on: none but
        # the one that maps its models).
        initializer = create_app(databases)
        result = initializer.test_cli_runner().invoke(args=["init-db"])
        assert result.output == "Initialized the database.\n", result.output
        dispose(initializer)
    return create_app({**databases, "ENGINE_OPTIONS": engine_options or {}})


def engines(app):
    """Return the app's engines by database: from step 6 on, it has two."""
    return app.extensions.get("engines") or {"messages": app.extensions["engine"]}


def dispose(app):
    """Close the pooled connections of each of the app's engines."""
    for engine in engines(app).values():
        engine.dispose()


def query(url, statement, **parameters):
    """Run SQL on a database through a connection of its own, as another
    program would; return the rows as dicts."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        rows = [
            row._asdict() for row in connection.execute(text(statement), parameters)
        ]
    engine.dispose()
    return rows


def drop_tables(url, *names):
    """Drop these tables from a database, where they exist."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        for name in names:
            connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
    engine.dispose()


def pool(app):
    """Return what the app's ``GET /pool`` answers."""
    response = app.test_client().get("/pool")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def show_table(rows):
    """Display a list of dicts as a table, one column per key, left-aligned."""
    columns = list(rows[0])
    rows = [{key: _plain(value) for key, value in row.items()} for row in rows]
    cell = '<{tag} style="text-align: left">{value}</{tag}>'
    head = "".join(cell.format(tag="th", value=column) for column in columns)
    body = "".join(
        "<tr>"
        + "".join(
            cell.format(tag="td", value=html.escape(str(row[column])))
            for column in columns
        )
        + "</tr>"
        for row in rows
    )
    display(HTML(f"<table><tr>{head}</tr>{body}</table>"))


def _plain(value):
    # 1.0 reads better as 1 in a table of counts.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Markers and dashes tell apart lines that lie on top of each other.
LINE_STYLES = ["o-", "x--", "s:", "^-."]


def line_chart(series, xlabel, title, ylabel="connections"):
    """Draw each named list of numbers as a line, against 1, 2, 3, ..."""
    figure, axes = plt.subplots(figsize=(7, 3))
    for number, (name, values) in enumerate(series.items()):
        style = LINE_STYLES[number % len(LINE_STYLES)]
        # Markers staggered, so that each line shows its own.
        axes.plot(
            range(1, len(values) + 1),
            values,
            style,
            label=name,
            markevery=(number * 2, 6),
        )
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    plt.show()


def bar_chart(timings, title, ylabel="µs per request (fastest)", log=False):
    """Draw what time_per_request() measured, with each ratio over its bar.

    With ``log=True`` the axis is logarithmic, for cases that differ by
    orders of magnitude.
    """
    names = list(timings)
    values = [timings[name]["µs per request"] for name in names]
    figure, axes = plt.subplots(figsize=(7, 3))
    labels = [textwrap.fill(name, 16) for name in names]
    bars = axes.bar(labels, values, color="#4c72b0")
    axes.bar_label(bars, [f"×{timings[name]['ratio']:.2f}" for name in names])
    if log:
        axes.set_yscale("log")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.margins(y=0.2)
    plt.show()


def grouped_bar_chart(groups, title, ylabel):
    """Draw counts: for each group, a bar per name, each count over its bar.

    ``groups`` maps a group's name to a dict of counts, the same names in
    each group.
    """
    names = list(next(iter(groups.values())))
    width = 0.8 / len(names)
    figure, axes = plt.subplots(figsize=(8, 3))
    for number, name in enumerate(names):
        positions = [group + number * width for group in range(len(groups))]
        heights = [counts[name] for counts in groups.values()]
        bars = axes.bar(positions, heights, width, label=name)
        axes.bar_label(bars)
    axes.set_xticks(
        [group + width * (len(names) - 1) / 2 for group in range(len(groups))],
        list(groups),
    )
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.margins(y=0.2)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    plt.show()


class PoolSampler:
    """Sample ``checked_out`` of an engine's pool in a thread of its own.

    Use it as a context manager; ``mark(label)`` notes a moment to draw.
    """

    def __init__(self, engine, interval=0.01):
        self.engine = engine
        self.interval = interval
        self.samples = []
        self.marks = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def now(self):
        """Return the seconds since sampling started."""
        return time.monotonic() - self.started

    def mark(self, label):
        """Note this moment, to draw as a vertical line."""
        self.marks.append((self.now(), label))

    def checked_out(self):
        """Return how many connections are checked out right now."""
        return self.engine.pool.checkedout()

    def _sample(self):
        while not self._stop.is_set():
            self.samples.append((self.now(), self.checked_out()))
            time.sleep(self.interval)
        self.samples.append((self.now(), self.checked_out()))

    def draw(self, title, failures=()):
        """Draw checked_out over time, and how many requests had failed."""
        figure, axes = plt.subplots(figsize=(8, 3))
        times, counts = zip(*self.samples, strict=True)
        axes.step(times, counts, where="post", label="checked out", linewidth=2)
        failed = [sum(moment <= time for moment in failures) for time in times]
        if failures:
            axes.step(times, failed, "r--", where="post", label="503s so far")
        top = max(*counts, *failed) + 1
        for moment, label in self.marks:
            axes.axvline(moment, color="grey", linestyle=":")
            axes.text(moment, top - 0.1, f" {label}", va="top", color="grey")
        axes.set_xlabel("seconds")
        axes.set_ylabel("count")
        axes.set_ylim(-0.5, top)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title)
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
        plt.show()


def requests_from_threads(app, sampler, threads, requests, pause=0.0):
    """Send ``GET /messages`` from long-lived threads, as a threaded server would.

    Each thread sends up to ``requests`` requests, ``pause`` seconds apart,
    and stops at its first failure. Return one list per thread of
    (seconds, status, error) for each of its requests.
    """
    outcomes = [[] for _ in range(threads)]

    def work(outcome):
        client = app.test_client()
        for _ in range(requests):
            response = client.get("/messages")
            error = (
                None if response.status_code == 200 else response.get_json()["error"]
            )
            outcome.append((sampler.now(), response.status_code, error))
            if error is not None:
                return
            time.sleep(pause)

    workers = [threading.Thread(target=work, args=(outcome,)) for outcome in outcomes]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes


class IdleConnections:
    """Keep track of the connections waiting in an engine's pool.

    ``drop()`` ends them as a server does when it times out an idle
    connection or restarts: on PostgreSQL the server really ends them
    (``pg_terminate_backend``); on SQLite, which has no server, they are
    closed under the pool's feet.
    """

    def __init__(self, engine):
        self.engine = engine
        self.waiting = {}
        event.listen(engine, "checkin", self._checked_in)
        event.listen(engine, "checkout", self._checked_out)

    def _checked_in(self, dbapi_connection, connection_record):
        if dbapi_connection is not None:
            self.waiting[id(dbapi_connection)] = dbapi_connection

    def _checked_out(self, dbapi_connection, connection_record, connection_proxy):
        self.waiting.pop(id(dbapi_connection), None)

    def drop(self):
        """End every connection waiting in the pool; return how many."""
        dropped = list(self.waiting.values())
        if self.engine.dialect.name == "postgresql":
            pids = [connection.info.backend_pid for connection in dropped]
            terminate_backends(self.engine.url, pids)
        else:
            for connection in dropped:
                connection.close()
        return len(dropped)


def terminate_backends(url, pids):
    """End these PostgreSQL server processes, and wait until they are gone."""
    admin = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)")
    with admin.connect() as connection:
        for pid in pids:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        deadline = time.monotonic() + 10
        while connection.scalar(query, {"pids": pids}) and time.monotonic() < deadline:
            time.sleep(0.02)
    admin.dispose()


def tag_connections(app):
    """Add ``GET /connection``: which process opened the serving connection.

    Each connection the app's engine opens is tagged with the pid of the
    process that opened it, and on PostgreSQL with its server process.
    """
    engine = app.extensions["engine"]

    @event.listens_for(engine, "connect")
    def tag(dbapi_connection, connection_record):
        connection_record.info["opened by pid"] = os.getpid()

    @app.get("/connection")
    def serving_connection():
        # The step's own get_session(): from step 4 on, it gives a forked
        # child pools of its own before it first uses one.
        session = importlib.import_module(f"{app.import_name}.db").get_session()
        connection = session.connection()
        answer = {"opened by pid": connection.info["opened by pid"]}
        if engine.dialect.name == "postgresql":
            # Asked of the server, over the connection's own socket.
            server_pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            answer["server pid"] = server_pid
        return answer


def in_forked_child(function):
    """Run ``function`` in a child process made by ``fork()``; return its result.

    multiprocessing's fork context forks as gunicorn --preload does; the
    result comes back through a pipe.
    """
    parent_end, child_end = multiprocessing.Pipe()

    def run_and_send():
        try:
            child_end.send(("result", function()))
        except Exception as error:
            child_end.send(("error", repr(error)))

    with warnings.catch_warnings():
        # Python 3.12+ warns that the kernel's own threads do not follow
        # into the child; the child here only runs ``function`` and exits.
        warnings.filterwarnings("ignore", "This process .* is multi-threaded")
        child = multiprocessing.get_context("fork").Process(target=run_and_send)
        child.start()
    assert parent_end.poll(60), "the forked child sent nothing within 60 s"
    kind, value = parent_end.recv()
    child.join()
    assert kind == "result", f"in the forked child: {value}"
    return value
