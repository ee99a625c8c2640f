"""What the fault drills do to an app and its server: fill the pool, end
the server's connections, wait for them to go, and send requests.

For the drills on PostgreSQL and MariaDB (tests/test_faults_postgres.py,
tests/test_mariadb.py): each server names its connections its own way.
"""

import time

from sqlalchemy import text
from sqlalchemy.engine import make_url

from .steps import pool_status

# Each server's ids of the connections to a database, and how to end one.
CONNECTIONS_QUERY = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE datname = :name",
    "mariadb": "SELECT id FROM information_schema.processlist WHERE db = :name",
}
KILL = {
    "postgresql": "SELECT pg_terminate_backend({})",
    "mariadb": "KILL {}",
}


def backend_pids(server, database_url):
    """Return the server's ids of the connections to the test's database:
    PostgreSQL's backend pids, MariaDB's connection ids."""
    url = make_url(database_url)
    engine = server.admin_engine()
    with engine.connect() as connection:
        ids = connection.execute(
            text(CONNECTIONS_QUERY[url.get_backend_name()]), {"name": url.database}
        ).scalars()
        return set(ids)


def wait_until_gone(server, database_url, pids):
    """Wait until none of these backends is left on the server."""
    for _ in range(100):
        if not pids & backend_pids(server, database_url):
            return
        time.sleep(0.05)
    raise AssertionError(f"backends {pids} still run")


def terminate_backends(server, database_url):
    """Kill every connection to the test's database, as a DBA or failover
    would: pg_terminate_backend on PostgreSQL, KILL on MariaDB."""
    pids = backend_pids(server, database_url)
    kill = KILL[make_url(database_url).get_backend_name()]
    engine = server.admin_engine()
    with engine.connect() as connection:
        for pid in pids:
            connection.exec_driver_sql(kill.format(int(pid)))
    wait_until_gone(server, database_url, pids)
    return pids


def fill_pool(app, connections):
    """Open this many connections at once, then return them all to the pool."""
    engine = app.extensions["engine"]
    held = [engine.connect() for _ in range(connections)]
    for connection in held:
        connection.close()
    assert pool_status(app.test_client())["checked_in"] == connections


def statuses_of(client, requests_count):
    """Send GET /messages this many times; return the statuses and errors."""
    outcomes = []
    for _ in range(requests_count):
        response = client.get("/messages")
        body = response.get_json()
        outcomes.append((response.status_code, body.get("error") if body else None))
    return outcomes
