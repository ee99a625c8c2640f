"""What ``/pool`` reports: the pattern, its loops, engines and connections."""

import os
import threading
from collections import Counter
from typing import Any

from flask import current_app
from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.pool import QueuePool


class Counts:
    """Counts of what an app's pools and sessions did, in this process."""

    def __init__(self) -> None:
        # By process and native thread: each thread adds to its own Counter
        # only, so no lock is needed (under gevent, a lock a greenlet made
        # is not one a native thread may take), and a forked child starts
        # at zero.
        self._counts: dict[tuple[int, int], Counter[str]] = {}

    def count(self, name: str) -> None:
        """Add one to a count of this process."""
        key = (os.getpid(), threading.get_native_id())
        if key not in self._counts:
            self._counts[key] = Counter()
        self._counts[key][name] += 1

    def totals(self) -> Counter[str]:
        """Return this process's counts, every thread's added up."""
        total: Counter[str] = Counter()
        pid = os.getpid()
        for (process, _), each in list(self._counts.items()):
            if process == pid:
                total.update(each)
        return total


def count_connections(engine: AsyncEngine, counts: Counts) -> None:
    """Count what the engine's pool does with its connections."""

    def on(name: str) -> None:
        def listener(
            dbapi_connection: DBAPIConnection,
            entry: ConnectionPoolEntry,
            proxy: PoolProxiedConnection | None = None,
        ) -> None:
            counts.count(name)

        event.listen(engine.sync_engine, name, listener)

    for name in ("connect", "checkout", "checkin", "close"):
        on(name)


def checked_out(engines: list[AsyncEngine], total: Counter[str]) -> int:
    """Return how many connections are checked out of the engines' pools."""
    pools = [engine.sync_engine.pool for engine in engines]
    if pools and all(isinstance(pool, QueuePool) for pool in pools):
        # The pools' own count: a connection that failed its pre-ping on
        # the "pooled" pattern goes back without a checkout event.
        return sum(pool.checkedout() for pool in pools if isinstance(pool, QueuePool))
    # NullPool keeps no count: what its events say.
    return total["checkout"] - total["checkin"]


def pool_status() -> dict[str, Any]:
    """Return the state of the app's engines and sessions, as ``/pool`` shows it."""
    runner = current_app.extensions["async_runner"]
    runner.claim()
    engines = runner.engines()
    total = current_app.extensions["async_counts"].totals()
    return {
        "pattern": current_app.config["ASYNC_PATTERN"],
        # None until a loop-per-thread app has made its first engine.
        "pool_class": type(engines[0].sync_engine.pool).__name__ if engines else None,
        "event_loops": runner.event_loops(),
        "engines": len(engines),
        # Checked out of a pool right now: 0 once every request has ended.
        "checked_out": checked_out(engines, total),
        # Opened by this process and not closed yet: in its pools, or out.
        "connections_open": total["connect"] - total["close"],
        "connects": total["connect"],
        "sessions_open": total["sessions_opened"] - total["sessions_closed"],
        "pid": os.getpid(),
        "url": runner.url.render_as_string(hide_password=True),
    }
