"""What the async drills share: each driver's URL, the server's count of
connections, and the garbage that connections left on a closed loop make.

Four asyncio drivers, each on the server it speaks to: psycopg 3's async
mode and asyncpg on PostgreSQL, aiosqlite on a SQLite file, aiomysql on
MariaDB.
"""

import gc
import logging
import sys
import time
import warnings
from contextlib import contextmanager

import requests
from sqlalchemy import text
from sqlalchemy.engine import make_url

from testbed.fork import in_forked_child
from testbed.gunicorn import Gunicorn
from testbed.mariadb import HOW_TO_GET_MARIADB
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.threads import in_threads

from .conftest import skip_or_fail

# Each driver: the server fixture it needs (None: a SQLite file), how to get
# one, and the drivername of its async URL.
DRIVERS = {
    "psycopg": ("postgres", HOW_TO_GET_POSTGRES, "postgresql+psycopg"),
    "asyncpg": ("postgres", HOW_TO_GET_POSTGRES, "postgresql+asyncpg"),
    "aiosqlite": (None, None, "sqlite+aiosqlite"),
    "aiomysql": ("mariadb", HOW_TO_GET_MARIADB, "mariadb+aiomysql"),
}

# How many requests a drill sends through the test client, one after another.
REQUESTS = 6


class AsyncDatabase:
    """An empty database of the test's own, reached through one async driver."""

    def __init__(self, driver, request, folder):
        fixture, how_to_get_it, drivername = DRIVERS[driver]
        self.driver = driver
        self.server = request.getfixturevalue(fixture) if fixture else None
        if fixture and self.server is None:
            skip_or_fail(how_to_get_it)
        if self.server is None:
            self.created = None
            self.url = f"{drivername}:///{folder / 'async.sqlite'}"
        else:
            self.created = self.server.create_database()
            self.url = (
                make_url(self.created)
                .set(drivername=drivername)
                .render_as_string(hide_password=False)
            )
        self.name = make_url(self.url).database

    def server_connections(self):
        """Return how many connections the server has open to the database,
        once the count stops falling: a server process outlives its
        client's goodbye by a few milliseconds."""
        if self.server is None:
            raise ValueError("a SQLite file has no server")
        if self.driver == "aiomysql":
            query = "SELECT count(*) FROM information_schema.processlist"
            query += " WHERE db = :name"
        else:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = :name"
        engine = self.server.admin_engine()
        try:
            with engine.connect() as connection:
                count = connection.execute(text(query), {"name": self.name}).scalar()
                for _ in range(40):
                    time.sleep(0.05)
                    again = connection.execute(text(query), {"name": self.name})
                    previous, count = count, again.scalar()
                    if count >= previous:
                        break
                return count
        finally:
            engine.dispose()

    def drop(self):
        """Drop the database, ending the connections left to it."""
        if self.created is not None:
            self.server.drop_database(self.created)


@contextmanager
def async_database(driver, request, folder):
    """Yield an AsyncDatabase for ``driver``, dropped afterwards."""
    database = AsyncDatabase(driver, request, folder)
    try:
        yield database
    finally:
        database.drop()


def get_each(app, count=REQUESTS, path="/read"):
    """Send ``count`` GET requests to the app's test client, one after
    another; return each answer as [status, the JSON error or None]."""
    client = app.test_client()
    answers = []
    for _ in range(count):
        response = client.get(path)
        answers.append([response.status_code, (response.get_json() or {}).get("error")])
    return answers


class PoolLog(logging.Handler):
    """A line for each record that SQLAlchemy's pools log, kept as text.

    Captured by pytest, a record would keep its exception's traceback, and
    with it the connection it names, alive until the test ends; kept as
    text, the connection goes as it would in an app.
    """

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        line = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line += f" | {type(error).__name__}: {error}"
        self.lines.append(line)


class Garbage:
    """The garbage collector held off during a test, and what collecting
    garbage says: warnings, and exceptions Python can only print
    ("Exception ignored in ..."), which a connection whose event loop has
    closed raises as it is cleaned up; and what the pools log meanwhile.

    pytest turns a warning or an exception ignored into a failure of
    whichever test is running when the collector happens to run; held
    here, a test collects when it chooses, and reads them. What a failed
    connection's frames hold (they stay in greenlets of the threads that
    asgiref started and ended) is freed later still, in whichever test
    runs then: the drills run in a forked child (``drill``), whose
    leftovers end with it.
    """

    def __init__(self):
        self.said = []
        self.pool_log = PoolLog()
        self._logger = logging.getLogger("sqlalchemy.pool")

    def __enter__(self):
        gc.collect()
        gc.disable()
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        self._logger.addHandler(self.pool_log)
        self._logger.propagate = False
        return self

    def _unraisable(self, unraisable):
        self.said.append(
            f"Exception ignored in: {unraisable.object!r}:"
            f" {unraisable.exc_type.__name__}: {unraisable.exc_value}"
        )

    def collect(self):
        """Collect garbage now; return what it said, and forget it."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # What one pass frees can leave more garbage: collect until
            # a pass finds none.
            for _ in range(10):
                if not gc.collect():
                    break
        said = [*self.said, *(f"{w.category.__name__}: {w.message}" for w in caught)]
        self.said = []
        return said

    def __exit__(self, *exc_info):
        try:
            self.collect()
        finally:
            self._logger.propagate = True
            self._logger.removeHandler(self.pool_log)
            sys.unraisablehook = self._hook
            gc.enable()


def drill(send, app, database):
    """In a forked child, with the collector held off, send requests to the
    app with ``send(app)``; return what they answered, the app's connection
    counts, the server's count of connections to the database, then what
    collecting garbage said and the pool logged, and the server's count
    after that.

    The child leaves with its connections, closed by the system as it ends.
    """

    def in_the_child():
        with Garbage() as garbage:
            answers = send(app)
            report = {
                "answers": answers,
                "counts": dict(app.extensions["connection_counts"]),
                "server": server_count(database),
            }
            report["said"] = garbage.collect()
            report["logged"] = garbage.pool_log.lines
            report["server_after_collecting"] = server_count(database)
        return report

    return in_forked_child(in_the_child)


def server_count(database):
    """Return the server's count of connections, or None for a SQLite file."""
    return None if database.server is None else database.server_connections()


def serve(app, database, log_path, *options, pool="queue", **env):
    """Return gunicorn, not yet started, serving tests/async_apps.py's
    ``app`` ("engine" or "lite") on the database, with ``options``, and
    more of the app's environment in ``env``."""
    return Gunicorn(
        "tests.async_apps:app",
        ["--workers", "1", *options],
        {
            "ASYNC_APP": app,
            "ASYNC_DATABASE_URL": database.url,
            "ASYNC_POOL": pool,
            **env,
        },
        log_path,
    )


def get_from_clients(url, clients, requests_each, timeout=30):
    """Send GET requests from ``clients`` threads, each one after another;
    return every answer as [status, the JSON error or None], or
    [None, "no answer"] for a request unanswered after ``timeout`` seconds,
    which ends its client."""

    def client(number, stop):
        answers = []
        with requests.Session() as http:
            for _ in range(requests_each):
                if stop.is_set():
                    break
                try:
                    response = http.get(url, timeout=timeout)
                except requests.Timeout:
                    answers.append([None, "no answer"])
                    break
                is_json = response.headers.get("Content-Type") == "application/json"
                error = response.json().get("error") if is_json else None
                answers.append([response.status_code, error])
        return answers

    return [answer for answers in in_threads(client, clients) for answer in answers]


def wait_until_answered_alone(url, tries=20, timeout=10):
    """Send GET requests one after another until one answers 200.

    gunicorn's readiness probe gives up on a request after a second
    (testbed.loopback.wait_for_http): on a busy machine the worker may
    still be serving one when the test's first request comes, and the two
    run at once. A 200 here means the worker served this one alone.
    """
    for _ in range(tries):
        try:
            if requests.get(url, timeout=timeout).status_code == 200:
                return
        except requests.RequestException:
            pass
    raise AssertionError(f"{url} never answered 200 in {tries} tries")
