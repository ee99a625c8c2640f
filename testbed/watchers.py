"""Watchers of pg_stat_activity: a query sampled in a thread while a load runs."""

import threading
import time

from sqlalchemy import text

from .pgbouncer import APP_ROLE


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


class ConnectionWatcher(QueryWatcher):
    """Sample how many server connections the app's role holds, per database."""

    def __init__(self, server, interval=0.01):
        super().__init__(
            server.admin_engine(),
            "SELECT datname, count(*) FROM pg_stat_activity"
            " WHERE usename = :role GROUP BY datname",
            {"role": APP_ROLE},
            interval,
        )
        self.most = {}
        self.most_in_all = 0

    def record(self, rows):
        counts = dict(rows)
        for database, count in counts.items():
            self.most[database] = max(self.most.get(database, 0), count)
        self.most_in_all = max(self.most_in_all, sum(counts.values()))
