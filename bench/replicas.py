"""What step 12's routing costs, and what a standby does to reads per second.

    python -m bench.replicas            # into bench/results/replicas.*
    python -m bench.replicas --quick    # a few rounds, into bench/quick-results/

A throwaway PostgreSQL primary and a hot standby of it (testbed/replicas.py),
on loopback, the standby caught up. Two measurements:

- **In-process**, GET /messages/1 through Flask's test client, the cases
  taking turns (bench/timing.py): step 11 on the primary alone, the
  baseline; step 12 with no standby configured; step 12 reading on the
  standby; and step 12 for a client whose wal_position cookie makes it ask
  the standby whether it has replayed that write. Then a POST of a message,
  step 11's against step 12's, which asks the primary for its WAL position
  after the commit.
- **Instructions per read**, in a full run when valgrind is installed:
  cachegrind counts what the app's process executes for GET /messages/1,
  two processes per case, one sending COUNTED_READS reads after a warm-up
  and one none, as bench/parity.py counts, once for each of HASH_SEEDS:
  the seed lays the process's objects out differently, and what identical
  code moves by from seed to seed is the count's noise.
- **Under load**, step 11 and step 12 under gunicorn (2 workers of 4 threads,
  --preload), driven by wrk, GET /messages/1, the two taking turns at each
  concurrency; each server's committed transactions are counted from
  pg_stat_database, so that where the reads went is measured on the
  servers, not taken from the app.
"""

import json
import shutil
import statistics
import sys
import time

from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.pool import NullPool

import step11_migrations
import step12_replicas
from testbed.gunicorn import Gunicorn
from testbed.postgres import find_binaries
from testbed.replicas import Replication
from testbed.step_apps import close_app
from testbed.step_apps import initialize_databases

from .cachegrind import instructions_per_request
from .cachegrind import send_counted
from .command_line import QUICK_NOTE
from .command_line import run_part
from .command_line import write_outputs
from .load import find_wrk
from .load import run_wrk
from .report import table
from .timing import CallAsClient
from .timing import time_per_request

STEP11 = "step 11, the primary alone"
NO_STANDBY = "step 12, no standby configured"
ON_THE_STANDBY = "step 12, reads on the standby"
WITH_THE_COOKIE = "step 12, a wal_position cookie to check"
CASES = [STEP11, NO_STANDBY, ON_THE_STANDBY, WITH_THE_COOKIE]
# The goal: routing costs a read at most this much over step 11's.
AT_MOST = 1.02
# Every message this part reads; the writes add more after it.
PATH = "/messages/1"
CONCURRENCIES = [8, 32]
# A position every standby has replayed: the cookie's check is a query that
# says yes, and the response deletes the cookie, which the next one sends
# again.
REPLAYED_LONG_AGO = "0/1"
# The cases with an app of their own (the cookie's reads through the
# standby's); the instruction count's reads, and its seeds.
COUNTED_READS = 300
HASH_SEEDS = ["0", "1", "2"]
APP_CASES = [STEP11, NO_STANDBY, ON_THE_STANDBY]
# Each server's transactions so far, committed and rolled back: a read's
# transaction ends with a rollback, in teardown.
TRANSACTIONS = (
    "SELECT xact_commit + xact_rollback FROM pg_stat_database"
    " WHERE datname = current_database()"
)


def databases_on(replication):
    """Create step 11's databases on the primary, with one message, and
    return their URLs and the standby's URL of the messages database."""
    databases = {
        "DATABASE_URL": replication.primary.create_database("messages"),
        "AUDIT_DATABASE_URL": replication.primary.create_database("audit"),
    }
    initialize_databases(step11_migrations.create_app, databases)
    app = step11_migrations.create_app(databases)
    created = app.test_client().post("/messages", json={"text": "read me"})
    assert created.headers["Location"] == PATH, created.get_json()
    close_app(app)
    replication.standby.wait_for_replay()
    standby = replication.standby.url_of(databases["DATABASE_URL"])
    return databases, standby


class WithCookie:
    """A test client that sends the wal_position cookie with every request,
    as a browser sends it back until the response deletes it."""

    def __init__(self, client, position):
        self._client = client
        self._headers = {"Cookie": f"wal_position={position}"}
        self.status_code = 200

    def get(self, path):
        return self._client.get(path, headers=self._headers)


def poster(client):
    """A stand-in client whose get() posts a message, and checks the 201."""

    def post():
        response = client.post("/messages", json={"text": "written"})
        assert response.status_code == 201, response.get_json()

    return CallAsClient(post)


def measure_in_process(databases, standby, requests, rounds):
    """Time the reads and the writes of step 11 and step 12, interleaved."""
    apps = {case: app_of(case, databases, standby) for case in APP_CASES}
    try:
        clients = {
            name: app.test_client(use_cookies=False) for name, app in apps.items()
        }
        clients[WITH_THE_COOKIE] = WithCookie(
            apps[ON_THE_STANDBY].test_client(use_cookies=False), REPLAYED_LONG_AGO
        )
        # Each reads where its case says, before anything is timed.
        answers = {name: client.get(PATH) for name, client in clients.items()}
        assert {answer.get_json()["text"] for answer in answers.values()} == {"read me"}
        routing = apps[ON_THE_STANDBY].extensions["routing"]
        clients[ON_THE_STANDBY].get(PATH)
        assert routing.last_reads["server"] == "standby", routing.last_reads
        assert "wal_position=;" in answers[WITH_THE_COOKIE].headers["Set-Cookie"]
        reads = time_per_request(clients, PATH, requests, rounds)
        writes = time_per_request(
            {
                STEP11: poster(clients[STEP11]),
                ON_THE_STANDBY: poster(clients[ON_THE_STANDBY]),
            },
            "",
            requests,
            rounds,
        )
    finally:
        for app in apps.values():
            close_app(app)
    return {"reads": reads, "writes": writes}


def app_of(case, databases, standby):
    """Make the app of an in-process case (but the cookie's)."""
    if case == STEP11:
        return step11_migrations.create_app(databases)
    if case == NO_STANDBY:
        return step12_replicas.create_app(databases)
    return step12_replicas.create_app({**databases, "REPLICA_DATABASE_URLS": [standby]})


def send(case, databases, standby, reads):
    """Make a case's app, and send its counted reads."""
    client = app_of(case, databases, standby).test_client(use_cookies=False)
    send_counted(client, PATH, reads)


def instructions_per_read(case, databases, standby, seed):
    """Count what one read of a case executes in the app's process."""
    return instructions_per_request(
        "bench.replicas", [case, json.dumps(databases), standby], COUNTED_READS, seed
    )


def counted(databases, standby):
    """Each counted case's instructions per read, for each seed, or why not."""
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed (apt-get install valgrind)"}
    return {
        seed: {
            case: instructions_per_read(case, databases, standby, seed)
            for case in APP_CASES
        }
        for seed in HASH_SEEDS
    }


def transactions(urls):
    """Return each server's count of transactions in the messages database."""
    counts = {}
    for name, url in urls.items():
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as connection:
            counts[name] = connection.scalar(text(TRANSACTIONS))
        engine.dispose()
    return counts


def measure_under_load(databases, standby, concurrencies, seconds, rounds):
    """Drive step 11 and step 12 under gunicorn with wrk, the two taking
    turns at each concurrency; count each server's transactions."""
    wrk = find_wrk()
    servers = {"primary": databases["DATABASE_URL"], "standby": standby}
    cases = {
        STEP11: ("step11_migrations.wsgi:app", {}),
        ON_THE_STANDBY: (
            "step12_replicas.wsgi:app",
            {"FLASK_REPLICA_DATABASE_URLS": json.dumps([standby])},
        ),
    }
    rows = []
    for number in range(rounds):
        for connections in concurrencies:
            names = list(cases)
            # Each round, the other case first.
            if number % 2:
                names.reverse()
            for name in names:
                app, env = cases[name]
                with Gunicorn(
                    app,
                    [
                        *("--workers", "2", "--threads", "4", "--preload"),
                        *("--log-level", "warning"),
                    ],
                    {**databases, **env},
                ) as server:
                    # Every worker warm before the clock starts.
                    run_wrk(wrk, server.url + PATH, 8, 1, 400)
                    before = transactions(servers)
                    summary = run_wrk(
                        wrk, server.url + PATH, connections, seconds, 200_000
                    )
                # A server process counts its transactions in the shared
                # statistics at the latest as it exits, once gunicorn has.
                time.sleep(1)
                after = transactions(servers)
                rows.append(
                    {
                        "round": number + 1,
                        "case": name,
                        "concurrency": connections,
                        "requests": summary["requests"],
                        "requests per second": round(
                            summary["requests"] / (summary["duration_us"] / 1e6)
                        ),
                        "p99 ms": round(summary["p99_us"] / 1000, 2),
                        "errors": summary["errors"],
                        **{
                            f"transactions on the {server}": after[server]
                            - before[server]
                            for server in servers
                        },
                    }
                )
    return rows


def summarize(rows):
    """Each case's median requests per second at each concurrency over the
    rounds, their range, and step 12's median over step 11's."""
    found = []
    for connections in sorted({row["concurrency"] for row in rows}):
        rates = {
            case: sorted(
                row["requests per second"]
                for row in rows
                if row["case"] == case and row["concurrency"] == connections
            )
            for case in (STEP11, ON_THE_STANDBY)
        }
        medians = {case: statistics.median(each) for case, each in rates.items()}
        found.append(
            {
                "concurrency": connections,
                **{
                    f"{case}, requests/s": f"{medians[case]:.0f}"
                    f" ({rates[case][0]} to {rates[case][-1]})"
                    for case in rates
                },
                "ratio of the medians": round(
                    medians[ON_THE_STANDBY] / medians[STEP11], 3
                ),
            }
        )
    return found


def measure(quick):
    """Start a primary and a standby; measure in-process, then under load."""
    requests, rounds = (2, 10) if quick else (10, 300)
    concurrencies, seconds, load_rounds = (
        (CONCURRENCIES[:1], 1, 1) if quick else (CONCURRENCIES, 5, 5)
    )
    replication = Replication(find_binaries())
    try:
        databases, standby = databases_on(replication)
        in_process = measure_in_process(databases, standby, requests, rounds)
        instructions = (
            {"skipped": "a --quick run counts no instructions"}
            if quick
            else counted(databases, standby)
        )
        rows = measure_under_load(
            databases, standby, concurrencies, seconds, load_rounds
        )
    finally:
        replication.destroy()
    return {
        "quick": quick,
        "in-process": in_process,
        "instructions per read": instructions,
        "under load": rows,
        "under load, mean": summarize(rows),
    }


def routing_share(counts):
    """What reading on the standby adds to a read with no standby."""
    return counts[ON_THE_STANDBY] / counts[NO_STANDBY] - 1


def goals(results):
    """Routing, on the standby and with none, at most AT_MOST times step 11's
    read."""
    reads = results["in-process"]["reads"]
    return [
        {
            "goal": f"{case}: at most {AT_MOST:.2f}× step 11's read",
            "ratio": reads[case]["ratio"],
            "met": "yes" if reads[case]["ratio"] <= AT_MOST else "NO",
        }
        for case in (NO_STANDBY, ON_THE_STANDBY)
    ]


def markdown(results):
    """Return the results as Markdown: in-process, under load, the goals."""
    parts = [
        "# Step 12's routing against step 11, and a standby under load\n\n",
        "In-process, µs per request, each case's fastest of the run, and its"
        f" ratio to {STEP11!r}'s."
        + (f" {QUICK_NOTE}" if results["quick"] else "")
        + "\n",
    ]
    for kind in ("reads", "writes"):
        parts.append(f"\n## In-process: {kind}\n\n")
        parts.append(
            table(
                [
                    {"case": case, **row}
                    for case, row in results["in-process"][kind].items()
                ]
            )
        )
    parts.append("\n## Instructions per read, the app's process\n\n")
    instructions = results["instructions per read"]
    if "skipped" in instructions:
        parts.append(f"Not counted: {instructions['skipped']}.\n")
    else:
        parts.append(
            table(
                [
                    {
                        "hash seed": seed,
                        **{case: f"{count:,}" for case, count in counts.items()},
                        "routing over no standby": f"{routing_share(counts):+.1%}",
                    }
                    for seed, counts in instructions.items()
                ]
            )
        )
    parts.append("\n## Under load: gunicorn, 2 workers of 4 threads, wrk\n\n")
    parts.append(table(results["under load, mean"]))
    parts.append("\nEach run, with each server's transactions counted on it:\n\n")
    parts.append(table(results["under load"]))
    if not results["quick"]:
        parts += ["\n## Goals\n\n", table(goals(results))]
    return "".join(parts)


def run(out, quick):
    """Measure, and write the outputs."""
    return write_outputs(out, "replicas", measure(quick), markdown)


def main():
    """Read the command line, measure, and name the outputs."""
    if sys.argv[1:2] == ["--send"]:
        case, databases, standby, reads = sys.argv[2:]
        send(case, json.loads(databases), standby, int(reads))
        return
    run_part("python -m bench.replicas", __doc__, run)


if __name__ == "__main__":
    main()
