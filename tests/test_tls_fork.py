"""Step 3's fork fault over TLS: the message readers search for.

Over TLS, a process that inherits a connection inherits a copy of its
encryption state too: keys, and a count of the records sent and received.
Once one gunicorn worker has used the master's connection, the other
worker's copy is behind. The first record it sends fails the server's
integrity check: the server logs "SSL error: decryption failed or bad
record mac" and ends the connection, and the worker that reads the
server's answer (an alert, sealed under a record count its copy has not
reached) fails with the same words. It takes no concurrency: two requests,
one after the other, one on each worker. Step 4 gives each worker a pool
of its own, and none of this happens.

The cluster is this module's own, started once per module (per xdist
worker, if its tests are shared out), since the run's default cluster
speaks plain TCP.
"""

import contextlib
import dataclasses
import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.engine import make_url

from testbed.gunicorn import Gunicorn
from testbed.loopback import free_port
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.postgres import Cluster
from testbed.postgres import find_binaries
from testbed.step_apps import initialize_databases

from .conftest import skip_or_fail
from .steps import import_step

# Each test starts gunicorn with two workers, a round at a time.
pytestmark = pytest.mark.slow

# What OpenSSL 3 prints, on both sides, for a record that fails its
# integrity check: TLS 1.3's words are the ones readers search for; TLS 1.2
# (AES-GCM) reports the same failure in other words.
BAD_RECORD = {
    "TLSv1.3": "SSL error: decryption failed or bad record mac",
    "TLSv1.2": "SSL error: cipher operation failed",
}

# Concurrent load: this many GET /messages from three threads, sent for
# this long at most; each request waits this long at most for its answer.
LOAD_REQUESTS = 40
LOAD_SECONDS = 15
REQUEST_TIMEOUT = 10
# The outcome of a request that timed out or whose connection dropped.
NO_ANSWER = ("no answer", None)
# A round is a fresh gunicorn and its load. Step 3 fails in every round in
# which both workers serve: a few rounds make sure one does.
ROUNDS = 3


@pytest.fixture(scope="module")
def tls_cluster():
    """Start a PostgreSQL cluster that accepts TLS, for this module's tests."""
    bindir = find_binaries()
    if bindir is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    cluster = Cluster(bindir, free_port(), tls=True)
    yield cluster
    cluster.destroy()


@pytest.fixture
def tls_database_url(tls_cluster):
    """Return the URL of an empty database on the TLS cluster; drop it after."""
    url = tls_cluster.create_database()
    yield url
    tls_cluster.drop_database(url)


@dataclasses.dataclass
class Round:
    """What one round of load against a fresh gunicorn left behind."""

    # (status, error) of each request: the 503's error, or NO_ANSWER.
    outcomes: list
    # The TLS protocol of each connection to the database: before the load
    # (the master's, which the workers inherit) and after it.
    protocols_at_start: list
    protocols_after_load: list
    gunicorn_log: str
    server_log: str

    def errors(self):
        """Return the error of each request that did not answer 200."""
        return [error for status, error in self.outcomes if status != 200]


def over(url, protocol):
    """Return the URL with the client held to one TLS protocol version."""
    return (
        make_url(url)
        .update_query_dict(
            {"ssl_min_protocol_version": protocol, "ssl_max_protocol_version": protocol}
        )
        .render_as_string(hide_password=False)
    )


def serve_under_load(step, cluster, database_url, load, folder, until=None):
    """Serve the step under ``gunicorn --preload --workers 2`` and send it
    ``load(url)``, a fresh server each round, until ``until(round)`` holds
    or ROUNDS have run; return the last round."""
    initialize_databases(import_step(step).create_app, {"DATABASE_URL": database_url})
    for number in range(ROUNDS):
        log_path = folder / f"gunicorn-{number}.log"
        server_log_start = len(cluster.server_log())
        with gunicorn_preload(step, database_url, log_path) as url:
            protocols_at_start = tls_protocols(cluster, database_url)
            outcomes = load(url)
            protocols_after_load = tls_protocols(cluster, database_url)
        this_round = Round(
            outcomes,
            protocols_at_start,
            protocols_after_load,
            log_path.read_text(errors="replace"),
            cluster.server_log()[server_log_start:],
        )
        if until is None or until(this_round):
            break
    return this_round


@contextlib.contextmanager
def gunicorn_preload(step, database_url, log_path):
    """Run the step's wsgi.py under gunicorn --preload; yield its URL."""
    with Gunicorn(
        f"{step}.wsgi:app",
        ["--preload", "--workers", "2"],
        {"DATABASE_URL": database_url},
        log_path,
        # Its workers stop with it, even one that hangs on a read.
        process_group=True,
    ) as gunicorn:
        yield gunicorn.url


def one_request_per_worker(url):
    """Send two GET /messages that two workers serve one after the other;
    return their outcomes in that order.

    The first is sent only in half: the worker that accepts it (the first
    to accept, since connections are accepted in the order they arrive)
    waits for the rest, so the other worker serves the second. Then the
    first is finished, and served.
    """
    address = urlsplit(url)
    with socket.create_connection(
        (address.hostname, address.port), timeout=REQUEST_TIMEOUT
    ) as held:
        held.sendall(
            b"GET /messages HTTP/1.1\r\nHost: %b\r\n" % address.netloc.encode()
        )
        served_first = get_messages(url)
        held.sendall(b"\r\n")
        return [served_first, read_outcome(held)]


def three_at_once(url):
    """Send LOAD_REQUESTS GET /messages from three threads; return the
    outcome of each request sent before LOAD_SECONDS ran out."""
    deadline = time.monotonic() + LOAD_SECONDS

    def send(_):
        return get_messages(url) if time.monotonic() < deadline else None

    with ThreadPoolExecutor(max_workers=3) as executor:
        outcomes = executor.map(send, range(LOAD_REQUESTS))
        return [outcome for outcome in outcomes if outcome is not None]


def get_messages(url):
    """Send GET /messages; return its (status, error)."""
    try:
        response = requests.get(url + "/messages", timeout=REQUEST_TIMEOUT)
    except (requests.Timeout, requests.ConnectionError):
        # A worker may wait for an answer the other worker read: an outcome
        # of the fault, not a failure of the test.
        return NO_ANSWER
    if response.status_code == 200:
        return (200, None)
    return (response.status_code, response.json()["error"])


def read_outcome(sock):
    """Read the answer to the request sent on ``sock``; return its (status, error)."""
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        body = response.read()
    except (TimeoutError, ConnectionError, http.client.HTTPException):
        return NO_ANSWER
    finally:
        response.close()
    if response.status == 200:
        return (200, None)
    return (response.status, json.loads(body)["error"])


def tls_protocols(cluster, database_url):
    """Return the TLS protocol of each connection to the database, or None
    for a connection in plain TCP."""
    engine = cluster.admin_engine()
    with engine.connect() as connection:
        protocols = connection.execute(
            text(
                "SELECT version FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)"
                " WHERE datname = :name"
            ),
            {"name": make_url(database_url).database},
        ).scalars()
        protocols = list(protocols)
    engine.dispose()
    return protocols


def server_said(message):
    """Return the line PostgreSQL logs for a failed record: ``LOG:  <message>``."""
    return f"LOG:  {message}"


@pytest.mark.parametrize("protocol", ["TLSv1.3", "TLSv1.2"])
def test_step3_under_gunicorn_preload_over_tls_fails_with_bad_record_mac(
    protocol, tls_cluster, tls_database_url, tmp_path
):
    error = f"(psycopg.OperationalError) consuming input failed: {BAD_RECORD[protocol]}"
    answer = f"database unavailable (OperationalError): {error}"

    this_round = serve_under_load(
        "step03_teardown",
        tls_cluster,
        over(tls_database_url, protocol),
        one_request_per_worker,
        tmp_path,
        until=lambda this_round: answer in this_round.errors(),
    )

    # Two requests, never at once: the second worker's first record is
    # stale, and so is its key to the server's alert. Its 503, gunicorn's
    # log of it, and the server's log all say so.
    assert this_round.outcomes == [(200, None), (503, answer)]
    assert f"sqlalchemy.exc.OperationalError: {error}\n" in this_round.gunicorn_log
    assert server_said(BAD_RECORD[protocol]) in this_round.server_log
    # The master's connection, which both workers used, was TLS.
    assert set(this_round.protocols_at_start) == {protocol}


def test_step3_with_concurrent_requests_over_tls_logs_bad_record_mac_on_the_server(
    tls_cluster, tls_database_url, tmp_path
):
    message = BAD_RECORD["TLSv1.3"]

    this_round = serve_under_load(
        "step03_teardown",
        tls_cluster,
        over(tls_database_url, "TLSv1.3"),
        three_at_once,
        tmp_path,
        until=lambda this_round: server_said(message) in this_round.server_log,
    )

    assert server_said(message) in this_round.server_log
    # Which worker reads the server's alert is a race: the one that sent the
    # stale record ("decryption failed or bad record mac"), the other ("ssl/tls
    # alert bad record mac"), or neither (the connection closed). Every
    # failure is a 503 of a lost connection, or no answer.
    assert this_round.errors()
    for error in this_round.errors():
        assert error is None or error.startswith(
            "database unavailable (OperationalError): (psycopg.OperationalError) "
        )
    assert set(this_round.protocols_at_start) == {"TLSv1.3"}


@pytest.mark.parametrize(
    "load", [one_request_per_worker, three_at_once], ids=lambda load: load.__name__
)
def test_step4_under_gunicorn_preload_over_tls_has_no_ssl_error(
    load, tls_cluster, tls_database_url, tmp_path
):
    this_round = serve_under_load(
        "step04_pooling",
        tls_cluster,
        over(tls_database_url, "TLSv1.3"),
        load,
        tmp_path,
        until=lambda this_round: len(this_round.protocols_after_load) >= 3,
    )

    assert this_round.outcomes
    assert this_round.errors() == []
    assert "SSL error" not in this_round.server_log
    assert "SSL error" not in this_round.gunicorn_log
    # The master's connection, then each worker's own beside it: both
    # workers served, every connection over TLS.
    assert set(this_round.protocols_at_start) == {"TLSv1.3"}
    assert len(this_round.protocols_after_load) >= 3
    assert set(this_round.protocols_after_load) == {"TLSv1.3"}
