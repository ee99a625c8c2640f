"""Run the benchmark and write its table, its JSON and its chart."""

import json
import pathlib
import platform
import sys
import tempfile
from importlib import metadata

import sqlalchemy

from testbed import mariadb
from testbed.loopback import free_port
from testbed.pgbouncer import HOW_TO_GET_PGBOUNCER
from testbed.pgbouncer import find_pgbouncer
from testbed.postgres import Cluster
from testbed.postgres import find_binaries
from testbed.step_apps import close_app

from . import async_views
from . import helpers
from . import parity
from . import per_test
from . import pid_check
from . import replicas
from . import report
from . import scale_out
from .apps import BASELINE
from .apps import CASES
from .apps import prepare_database
from .command_line import QUICK_NOTE
from .command_line import parse
from .command_line import parser_for
from .load import find_wrk
from .load import load_test
from .timing import time_per_request

CONCURRENCIES = [1, 8, 32, 64]


def parse_arguments():
    """Read the command line."""
    parser = parser_for("python -m bench", __doc__)
    parser.add_argument(
        "--postgres-url",
        help="a PostgreSQL database to use (its tables are created); by default"
        " a throwaway server is started, when PostgreSQL is installed",
    )
    parser.add_argument(
        "--no-postgres",
        action="store_true",
        help="no PostgreSQL, in any part (--postgres-url is the main table's only)",
    )
    parser.add_argument(
        "--mariadb-url",
        help="a MariaDB database to use (its tables are created); by default"
        " a throwaway server is started, when MariaDB is installed",
    )
    parser.add_argument(
        "--no-mariadb",
        action="store_true",
        help="no MariaDB, in any part (--mariadb-url is the main table's only)",
    )
    parser.add_argument("--no-load", action="store_true", help="skip the load test")
    parser.add_argument(
        "--no-per-test",
        action="store_true",
        help="skip what a clean database costs per test (python -m bench.per_test)",
    )
    parser.add_argument(
        "--no-helpers",
        action="store_true",
        help="skip step 10's helpers against Flask-SQLAlchemy's"
        " (python -m bench.helpers)",
    )
    parser.add_argument(
        "--no-parity",
        action="store_true",
        help="skip step 4 against Flask-SQLAlchemy three ways (python -m bench.parity)",
    )
    parser.add_argument(
        "--no-async-views",
        action="store_true",
        help="skip what an async view costs, Flask's default against steps 9"
        " and 10's (python -m bench.async_views)",
    )
    parser.add_argument(
        "--no-scale-out",
        action="store_true",
        help="skip step 8's instances on one small PostgreSQL, with and without"
        " PgBouncer (python -m bench.scale_out)",
    )
    parser.add_argument(
        "--no-replicas",
        action="store_true",
        help="skip step 12's routing against step 11, and a standby under load"
        " (python -m bench.replicas)",
    )
    parser.add_argument(
        "--rounds", type=int, help="in-process rounds of the main table (300)"
    )
    parser.add_argument(
        "--requests", type=int, help="requests per case and round, main table (10)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (4)")
    parser.add_argument(
        "--seconds", type=float, help="seconds per load level, at most (5)"
    )
    return parse(parser)


def measure(backend, url, arguments, load=True):
    """Measure every case in-process, then step 4 under load, on one database."""
    path = prepare_database(url)
    message = CASES["step04_pooling"](url, None).test_client().get(path).get_json()
    clients = {name: make(url, message).test_client() for name, make in CASES.items()}
    # Every case answers the same JSON before anything is timed.
    for name, client in clients.items():
        answer = client.get(path)
        assert answer.status_code == 200, (name, answer.get_data(as_text=True))
        assert answer.get_json() == message, (name, answer.get_json())
    try:
        timings = time_per_request(
            clients, path, arguments.requests, arguments.rounds, baseline=BASELINE
        )
        result = {"backend": backend, "path": path, "in_process": timings}
        step4 = clients["step04_pooling"].application
        result["pid check"] = pid_check.measure(
            step4, path, timings["step04_pooling"]["µs per request"], arguments.quick
        )
    finally:
        # Step 2 never removes its Session: left open, its connection would
        # be reset as it is garbage-collected, after the server has stopped,
        # and the log would show the failure.
        for client in clients.values():
            if "engines" in client.application.extensions:
                close_app(client.application)
    if load and not arguments.no_load:
        result["load"] = load_test(
            url,
            path,
            CONCURRENCIES,
            arguments.seconds,
            arguments.requests_under_load,
            arguments.workers,
            arguments.threads,
        )
    return result


def versions():
    """Name what the numbers were measured with."""
    names = [
        "flask",
        "flask-sqlalchemy",
        "flask-sqlalchemy-lite",
        "psycopg",
        "pymysql",
        "gunicorn",
    ]
    return {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "sqlalchemy": sqlalchemy.__version__,
        **{name: metadata.version(name) for name in names},
    }


def main():
    """Run every measurement the command line asks for; write the outputs."""
    arguments = parse_arguments()
    quick = arguments.quick
    arguments.rounds = arguments.rounds or (30 if quick else 300)
    arguments.requests = arguments.requests or (2 if quick else 10)
    arguments.seconds = arguments.seconds or (1 if quick else 5)
    # A safety cap: each level ends by its duration long before.
    arguments.requests_under_load = 200_000
    if not arguments.no_load and find_wrk() is None:
        raise SystemExit("the load test needs wrk: apt-get install wrk (or --no-load)")

    results = {"versions": versions(), "quick": quick, "backends": []}
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.sqlite"
        results["backends"].append(measure("sqlite", url, arguments))
    if arguments.postgres_url:
        results["backends"].append(
            measure("postgresql", arguments.postgres_url, arguments)
        )
    elif not arguments.no_postgres and (bindir := find_binaries()) is not None:
        cluster = Cluster(bindir, free_port())
        try:
            results["backends"].append(
                measure("postgresql", cluster.create_database("bench"), arguments)
            )
        finally:
            cluster.destroy()
    # MariaDB in-process only: the load test counts the server's
    # connections in PostgreSQL's pg_stat_activity.
    if arguments.mariadb_url:
        results["backends"].append(
            measure("mariadb", arguments.mariadb_url, arguments, load=False)
        )
    elif not arguments.no_mariadb and (binaries := mariadb.find_binaries()):
        instance = mariadb.Instance(binaries, free_port())
        try:
            results["backends"].append(
                measure(
                    "mariadb", instance.create_database("bench"), arguments, load=False
                )
            )
        finally:
            instance.destroy()

    out = pathlib.Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(report.markdown(results))
    report.chart(results, out / "results.png")
    for name in ("results.md", "results.json", "results.png"):
        print(out / name)
    if not arguments.no_per_test:
        for path in per_test.run(out, quick):
            print(path)
    # The parts that start servers of their own leave out those the command
    # line does; none takes a server you name.
    servers = [
        name
        for name, left_out in (
            ("postgresql", arguments.no_postgres),
            ("mariadb", arguments.no_mariadb),
        )
        if not left_out
    ]
    if not arguments.no_helpers:
        for path in helpers.run(out, quick, servers):
            print(path)
    if not arguments.no_parity:
        for path in parity.run(out, quick, servers):
            print(path)
    if not arguments.no_async_views:
        async_servers = [name for name in servers if name == "postgresql"]
        for path in async_views.run(out, quick, async_servers):
            print(path)
    if not arguments.no_scale_out and not arguments.no_load:
        if find_pgbouncer() is None or find_binaries() is None:
            print(f"scale-out skipped: {HOW_TO_GET_PGBOUNCER}", file=sys.stderr)
        else:
            for path in scale_out.run(out, quick):
                print(path)
    if not arguments.no_replicas and not arguments.no_load:
        if "postgresql" not in servers or find_binaries() is None:
            print("replicas skipped: they need PostgreSQL", file=sys.stderr)
        else:
            for path in replicas.run(out, quick):
                print(path)
    if quick:
        print(QUICK_NOTE)


if __name__ == "__main__":
    main()
