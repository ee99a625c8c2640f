"""Samplers: a reading taken in a thread every few milliseconds while a
``with`` block runs, such as what pg_stat_activity says during a load."""

import threading
import time

from sqlalchemy import text

from .pgbouncer import APP_ROLE


class Sampler:
    """Call ``sample()`` every ``interval`` seconds, in a thread of its own,
    while a ``with`` block runs; a subclass says what a sample is."""

    def __init__(self, interval):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def _sample_until_stopped(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self):
        """Take one sample."""
        raise NotImplementedError


class QueryWatcher(Sampler):
    """Run a query every ``interval`` seconds on a connection of its own, in a
    thread, while a ``with`` block runs; a subclass records the rows.

    The connection opens as the watcher is created, before any load, so
    that it never waits for a free slot on a full server.
    """

    def __init__(self, engine, query, parameters, interval):
        super().__init__(interval)
        self._engine = engine
        self._query = text(query)
        self._parameters = parameters
        self._connection = engine.connect()

    def __exit__(self, *exc_info):
        super().__exit__(*exc_info)
        self._connection.close()
        self._engine.dispose()

    def sample(self):
        self.record(self._connection.execute(self._query, self._parameters).all())

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
