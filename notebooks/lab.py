"""What the notebooks share: an app on a throwaway database, tables and charts.

The notebooks import this module from their own folder, where Jupyter starts
their kernel; what they share with the tests and the benchmark (a load from
threads, a fork, servers) they import from ``testbed``. Everything a notebook
is about stays in the notebook; what is here only sets the stage and draws.
"""

import atexit
import contextlib
import html
import importlib
import logging
import os
import shutil
import signal
import tempfile
import textwrap
import time

import matplotlib.pyplot as plt
from IPython.display import HTML
from IPython.display import display
from matplotlib.ticker import MaxNLocator
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from testbed.step_apps import initialize_databases
from testbed.watchers import Sampler

_folder = tempfile.mkdtemp(prefix="flask-sqlalchemy-notebook-")
atexit.register(shutil.rmtree, _folder, ignore_errors=True)


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
        # In an app of its own: the app the notebook looks at has opened no
        # connection yet (from step 5 on: none but the one that maps its
        # models).
        initialize_databases(create_app, databases)
    return create_app({**databases, "ENGINE_OPTIONS": engine_options or {}})


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


class PoolSampler(Sampler):
    """Sample ``checked_out`` of an engine's pool in a thread of its own.

    Use it as a context manager; ``mark(label)`` notes a moment to draw.
    """

    def __init__(self, engine, interval=0.01):
        super().__init__(interval)
        self.engine = engine
        self.samples = []
        self.marks = []

    def __enter__(self):
        self.started = time.monotonic()
        return super().__enter__()

    def __exit__(self, *exc_info):
        super().__exit__(*exc_info)
        # One more as the block ends.
        self.sample()

    def now(self):
        """Return the seconds since sampling started."""
        return time.monotonic() - self.started

    def mark(self, label):
        """Note this moment, to draw as a vertical line."""
        self.marks.append((self.now(), label))

    def checked_out(self):
        """Return how many connections are checked out right now."""
        return self.engine.pool.checkedout()

    def sample(self):
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
