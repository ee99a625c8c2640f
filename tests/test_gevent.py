"""Step 4 under gunicorn's gevent worker: what thread scope gives greenlets.

gunicorn's gevent worker monkey-patches the standard library in each
worker, after fork (GeventWorker.init_process). Without --preload the
worker loads the app after that, so scoped_session's threading.local is
gevent's, one per greenlet, and psycopg, which picks its wait function as
it is imported, picks one that yields to other greenlets. With --preload
the master built the app before any patching: one real thread-local for
every greenlet of a worker, and psycopg's C wait, which blocks the whole
worker during each query. Patching in a gunicorn config file, which
gunicorn reads before it preloads the app, puts gevent under all of it.

Each configuration serves tests/gevent_app.py (step 4's wsgi.py, with
routes that report what the worker got) from one worker of 50 greenlets
to 40 client threads, on PostgreSQL, where a query that waits for the
server is what a blocked worker holds up. The tests count (Sessions held
at once, queries running at once) and never time: requests_per_second is
there for the failure message.
"""

import time
from datetime import timedelta
from typing import NamedTuple

import pytest
import requests
from sqlalchemy.engine import make_url

from testbed.gunicorn import Gunicorn
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.threads import in_threads
from testbed.watchers import QueryWatcher

from .conftest import skip_or_fail

# Each configuration starts gunicorn and loads it for a few seconds.
pytestmark = pytest.mark.slow

GREENLETS = 50
CLIENTS = 40
# Each client stops at this many requests, or once the phase's time is up.
REQUESTS_EACH = 100
SESSION_SECONDS = 0.5
LOAD_SECONDS = 2
# What /gevent/query runs (tests/gevent_app.py, word for word), and how
# long it lasts.
QUERY = "SELECT pg_sleep(0.1)"
QUERY_SECONDS = 0.1

# Patches before gunicorn loads anything of the app's.
PATCHED_CONFIG = "tests/gunicorn_gevent_patched.conf.py"


class ActiveQueries(QueryWatcher):
    """Sample which server connections to a database run the test's query,
    and count the most query runs that overlapped.

    A sample's count of active rows is not enough: pg_stat_activity reads
    the backends one after another, so one sample can see a query that has
    just ended and the next one, on another connection, that has just
    begun (CI once counted 2 where one ran at a time). Each run is told by
    its connection and its start instead, and lasts at least QUERY_SECONDS:
    two runs overlap when they started less than that apart.
    """

    def __init__(self, server, database_url, interval=0.005):
        super().__init__(
            server.admin_engine(),
            "SELECT pid, query_start FROM pg_stat_activity"
            " WHERE datname = :name AND state = 'active' AND query = :query",
            {"name": make_url(database_url).database, "query": QUERY},
            interval,
        )
        self.runs = set()

    def record(self, rows):
        self.runs.update((pid, started) for pid, started in rows)

    @property
    def most(self):
        """The most runs under way at one moment."""
        starts = sorted(started for _, started in self.runs)
        shortest_run = timedelta(seconds=QUERY_SECONDS)
        most = first = 0
        for last, started in enumerate(starts):
            while started - starts[first] >= shortest_run:
                first += 1
            most = max(most, last - first + 1)
        return most


class Measurement(NamedTuple):
    """What one gunicorn configuration did under load."""

    # psycopg's wait function, and the session registry's thread-local
    # class, in the worker.
    wait: str
    local: str
    # The most requests that held one Session at once.
    most_requests_on_one_session: int
    # The most server connections that ran a query at once.
    most_queries_at_once: int
    # The same from async views (/gevent/async-query), for the steps that
    # have them; None where not measured.
    most_async_queries_at_once: int | None
    # Answered requests of /gevent/query per second.
    requests_per_second: float
    # Answers other than 2xx, and requests that got none.
    errors: list
    # What gunicorn logged, for a failure's message.
    log: str


def get_from_clients(url, seconds):
    """Send GET requests to ``url`` from CLIENTS threads for ``seconds``.

    Return the answers, as (status, JSON body or text) or (None, why there
    was none), and the seconds until the last came back.
    """
    started = time.monotonic()

    def client(number, stop):
        answers = []
        with requests.Session() as http:
            for _ in range(REQUESTS_EACH):
                if stop.is_set():
                    break
                try:
                    response = http.get(url, timeout=30)
                except requests.RequestException as error:
                    answers.append((None, repr(error)))
                    continue
                is_json = response.headers.get("Content-Type") == "application/json"
                body = response.json() if is_json else response.text
                answers.append((response.status_code, body))
        return answers

    per_client = in_threads(client, CLIENTS, seconds=seconds)
    answers = [answer for each in per_client for answer in each]
    return answers, time.monotonic() - started


def errors_in(answers):
    """Return the answers that are not a success."""
    return [answer for answer in answers if not 200 <= (answer[0] or 0) < 300]


def measure(server, database_url, options, log_path, step, async_views=False):
    """Serve a step under gunicorn's gevent worker with ``options``, load it
    through /gevent/session and then /gevent/query (and /gevent/async-query
    with ``async_views``), and stop it."""
    with Gunicorn(
        "tests.gevent_app:app",
        [
            *("--worker-class", "gevent", "--workers", "1"),
            # Stopped once the load has its answers: no stragglers to wait for.
            *("--graceful-timeout", "1"),
            *("--worker-connections", str(GREENLETS), *options),
        ],
        # Step 9's audit database is never read here: the same one will do.
        {
            "DATABASE_URL": database_url,
            "AUDIT_DATABASE_URL": database_url,
            "GEVENT_APP_STEP": step,
        },
        log_path,
    ) as gunicorn:
        url = gunicorn.url
        setup = requests.get(url + "/gevent/setup", timeout=30).json()
        session_answers, _ = get_from_clients(url + "/gevent/session", SESSION_SECONDS)
        with ActiveQueries(server, database_url) as active:
            query_answers, seconds = get_from_clients(
                url + "/gevent/query", LOAD_SECONDS
            )
        async_answers, most_async = [], None
        if async_views:
            with ActiveQueries(server, database_url) as active_async:
                async_answers, _ = get_from_clients(
                    url + "/gevent/async-query", LOAD_SECONDS
                )
            most_async = active_async.most
    answered = len(query_answers) - len(errors_in(query_answers))
    return Measurement(
        wait=setup["wait"],
        local=setup["local"],
        most_requests_on_one_session=max(
            (body["held_by"] for status, body in session_answers if status == 200),
            default=0,
        ),
        most_queries_at_once=active.most,
        most_async_queries_at_once=most_async,
        requests_per_second=answered / seconds,
        errors=errors_in(session_answers)
        + errors_in(query_answers)
        + errors_in(async_answers),
        log=gunicorn.log(),
    )


@pytest.fixture(scope="module")
def measure_with(postgres, tmp_path_factory):
    """Return a function that measures a gunicorn configuration, on a
    PostgreSQL database of the module's own."""
    if postgres is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    database_url = postgres.create_database()
    folder = tmp_path_factory.mktemp("gevent")

    def measure_options(name, *options, step="step04_pooling"):
        async_views = step != "step04_pooling"
        log_path = folder / f"{name}.log"
        return measure(postgres, database_url, options, log_path, step, async_views)

    yield measure_options
    postgres.drop_database(database_url)


@pytest.fixture(scope="module")
def without_preload(measure_with):
    """Measure gevent workers that load the app themselves, after patching."""
    return measure_with("without_preload")


@pytest.fixture(scope="module")
def with_preload(measure_with):
    """Measure gevent workers forked from a master that loaded the app."""
    return measure_with("with_preload", "--preload")


@pytest.fixture(scope="module")
def step9_with_preload(measure_with):
    """Measure step 9, Sessions per app context, with --preload."""
    return measure_with("step9_with_preload", "--preload", step="step09_app_context")


@pytest.fixture(scope="module")
def step9_without_preload(measure_with):
    """Measure step 9 with gevent workers that load the app themselves."""
    return measure_with("step9_without_preload", step="step09_app_context")


@pytest.fixture(scope="module")
def patched_before_preload(measure_with):
    """Measure --preload with gevent's patching done in the config file."""
    return measure_with(
        "patched_before_preload", "--preload", "--config", PATCHED_CONFIG
    )


def test_without_preload_each_request_gets_a_session_of_its_own(without_preload):
    # scoped_session's threading.local is gevent's: one per greenlet.
    assert without_preload.local.startswith("gevent."), without_preload
    assert without_preload.most_requests_on_one_session == 1, without_preload
    assert without_preload.errors == [], without_preload.log


def test_without_preload_psycopg_waits_cooperatively_so_queries_run_at_once(
    without_preload,
):
    # What psycopg picks on Linux once gevent has patched select.
    assert without_preload.wait == "wait_poll", without_preload
    assert without_preload.most_queries_at_once >= 5, without_preload
    assert without_preload.errors == [], without_preload.log


def test_with_preload_the_requests_of_a_worker_share_one_session(with_preload):
    # The registry's threading.local was made in the master, before
    # patching: a real one, and the worker's greenlets all run on one thread.
    assert with_preload.local == "_thread._local", with_preload
    assert with_preload.most_requests_on_one_session >= 5, with_preload
    assert with_preload.errors == [], with_preload.log


def test_with_preload_psycopg_blocks_the_worker_so_queries_run_one_at_a_time(
    with_preload,
):
    # psycopg was imported in the master, before patching: its C wait
    # blocks the worker's one thread, greenlets and all, during each query.
    assert with_preload.wait == "wait_c", with_preload
    assert with_preload.most_queries_at_once == 1, with_preload
    # Slower, but no request fails: they wait their turn.
    assert with_preload.errors == [], with_preload.log


def test_patching_in_the_config_file_gives_preloaded_requests_their_own_sessions(
    patched_before_preload,
):
    assert patched_before_preload.local.startswith("gevent."), patched_before_preload
    assert patched_before_preload.most_requests_on_one_session == 1, (
        patched_before_preload
    )
    assert patched_before_preload.errors == [], patched_before_preload.log


def test_patching_in_the_config_file_lets_preloaded_queries_run_at_once(
    patched_before_preload,
):
    assert patched_before_preload.wait == "wait_poll", patched_before_preload
    assert patched_before_preload.most_queries_at_once >= 5, patched_before_preload
    assert patched_before_preload.errors == [], patched_before_preload.log


def test_with_preload_step_9_gives_each_request_its_own_session(
    step9_with_preload, with_preload
):
    # Flask keeps the app context in a context variable, and greenlet gives
    # each greenlet variables of its own, patched or not: keyed by the app
    # context, the greenlets' Sessions are apart where step 4's thread
    # scope, which steps 5 to 8 keep, shares one (with_preload).
    assert step9_with_preload.local == "builtins.dict", step9_with_preload
    assert step9_with_preload.most_requests_on_one_session == 1, step9_with_preload
    assert with_preload.most_requests_on_one_session >= 5, with_preload
    assert step9_with_preload.errors == [], step9_with_preload.log
    # The scope changes nothing of psycopg's choice: imported in the master,
    # before patching, its C wait still runs one query at a time.
    assert step9_with_preload.wait == "wait_c", step9_with_preload
    assert step9_with_preload.most_queries_at_once == 1, step9_with_preload


def test_step_9s_async_views_run_one_at_a_time_beside_sync_queries_at_once(
    step9_without_preload, step9_with_preload
):
    # async_views.py: one event loop at a time on the worker's thread, so
    # its async views take turns, while its sync views' queries, which
    # psycopg waits for cooperatively, run at once. Every request answers.
    assert step9_without_preload.most_queries_at_once >= 5, step9_without_preload
    assert step9_without_preload.most_async_queries_at_once == 1, step9_without_preload
    assert step9_without_preload.errors == [], step9_without_preload.log
    # Preloaded, psycopg's C wait runs every query one at a time anyway.
    assert step9_with_preload.most_async_queries_at_once == 1, step9_with_preload
    assert step9_with_preload.errors == [], step9_with_preload.log
