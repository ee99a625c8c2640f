"""Step 4 under load: gunicorn on loopback, driven by wrk, watched on the server."""

import json
import os
import pathlib
import shutil
import subprocess

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from step04_pooling.db import POOL_DEFAULTS
from testbed.gunicorn import Gunicorn
from testbed.watchers import QueryWatcher

# wrk stops each thread after its share of the requests, and reports as JSON.
# The count is a safety cap; each level is meant to end by its duration,
# which is what requests per second divides by.
BOUNDED_SCRIPT = pathlib.Path(__file__).with_name("bounded.lua")
HOW_TO_GET_WRK = "the load test needs wrk: apt-get install wrk"


def find_wrk():
    """Return the path of wrk, or None."""
    return shutil.which("wrk")


# The name the load test's connections give PostgreSQL, so that the watcher
# counts theirs alone.
APPLICATION_NAME = "step04-under-load"


def tagged(database_url):
    """Name the load test's connections, on PostgreSQL."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return database_url
    return url.update_query_dict(
        {"application_name": APPLICATION_NAME}
    ).render_as_string(hide_password=False)


class LoadTestConnections(QueryWatcher):
    """Sample how many connections the load test's server processes hold."""

    def __init__(self, database_url, interval=0.02):
        url = make_url(database_url)
        super().__init__(
            create_engine(
                url.set(database="postgres"),
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
            ),
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = :name AND application_name = :application",
            {"name": url.database, "application": APPLICATION_NAME},
            interval,
        )
        self.most = 0

    def record(self, rows):
        [(count,)] = rows
        self.most = max(self.most, count)


def run_wrk(wrk, url, connections, seconds, requests_at_most):
    """Drive a URL with wrk; return its summary."""
    threads = min(connections, 2)
    completed = subprocess.run(
        [
            *(wrk, "--threads", str(threads), "--connections", str(connections)),
            *("--duration", f"{seconds}s", "--timeout", "10s"),
            *("--script", str(BOUNDED_SCRIPT), url),
        ],
        env={
            **os.environ,
            "WRK_REQUESTS_PER_THREAD": str(max(1, requests_at_most // threads)),
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    line = completed.stdout.strip().splitlines()[-1]
    return json.loads(line)


def load_test(
    database_url,
    path,
    concurrencies,
    seconds,
    requests_at_most,
    workers=2,
    threads=4,
):
    """Run step 4 under gunicorn and wrk at each concurrency; return the rows."""
    wrk = find_wrk()
    if wrk is None:
        raise SystemExit(HOW_TO_GET_WRK)
    on_postgresql = make_url(database_url).get_backend_name() == "postgresql"
    server = Gunicorn(
        "step04_pooling.wsgi:app",
        [
            *("--workers", str(workers), "--threads", str(threads), "--preload"),
            # No access log: the load test counts the answers itself.
            *("--log-level", "warning"),
        ],
        {"DATABASE_URL": tagged(database_url)},
    ).wait()
    rows = []
    try:
        for connections in concurrencies:
            if on_postgresql:
                with LoadTestConnections(database_url) as watcher:
                    summary = run_wrk(
                        wrk, server.url + path, connections, seconds, requests_at_most
                    )
                most_connections = watcher.most
            else:
                summary = run_wrk(
                    wrk, server.url + path, connections, seconds, requests_at_most
                )
                most_connections = None
            rows.append(
                {
                    "concurrency": connections,
                    "requests": summary["requests"],
                    # Stopped by the cap rather than the clock: the rate is
                    # then too low.
                    "capped": summary["requests"] >= requests_at_most,
                    "requests per second": round(
                        summary["requests"] / (summary["duration_us"] / 1e6)
                    ),
                    "p50 ms": round(summary["p50_us"] / 1000, 2),
                    "p99 ms": round(summary["p99_us"] / 1000, 2),
                    "errors": summary["errors"],
                    "most server connections": most_connections,
                }
            )
    finally:
        server.stop()
    limit = workers * (POOL_DEFAULTS["pool_size"] + POOL_DEFAULTS["max_overflow"])
    return {
        "workers": workers,
        "threads": threads,
        # Each worker's pool, and the master's one connection from wsgi.py.
        "server connections allowed": limit + 1,
        "rows": rows,
    }
