"""Scaling out: several gunicorn instances on one small PostgreSQL, with and
without PgBouncer in front.

    python -m bench.scale_out            # into bench/results/scale_out.*
    python -m bench.scale_out --quick    # one short level, into bench/quick-results/

Four instances of step 8 stand in for four hosts, each with two workers of
four threads, against a PostgreSQL whose max_connections is 20 (17 for the
app's role). wrk drives every instance at once, GET /messages/<id>, at each
total concurrency; the cases take turns at each level, each on instances
started afresh:

- straight to the server, step 8 with BEHIND_POOLER off (step 4's pools);
- through PgBouncer (transaction mode, 5 server connections per database),
  BEHIND_POOLER on: the step's QueuePool, without pre-ping;
- the same with pre-ping;
- the same with NullPool: a new connection to PgBouncer for every request.

A watcher samples pg_stat_activity for the app's server connections.
"""

import json
import pathlib
import statistics
import subprocess
import tempfile

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import requests  # noqa: E402

from step08_pgbouncer import create_app  # noqa: E402
from step08_pgbouncer.db import POOL_DEFAULTS  # noqa: E402
from testbed.gunicorn import Instances  # noqa: E402
from testbed.loopback import free_port  # noqa: E402
from testbed.pgbouncer import APP_CONNECTIONS_ALLOWED  # noqa: E402
from testbed.pgbouncer import POOL_SIZE  # noqa: E402
from testbed.pgbouncer import PgBouncer  # noqa: E402
from testbed.pgbouncer import SmallServer  # noqa: E402
from testbed.postgres import find_binaries  # noqa: E402
from testbed.step_apps import dispose_engines  # noqa: E402
from testbed.step_apps import initialize_databases  # noqa: E402
from testbed.watchers import ConnectionWatcher  # noqa: E402

from .command_line import QUICK_NOTE  # noqa: E402
from .command_line import run_part  # noqa: E402
from .load import BOUNDED_SCRIPT  # noqa: E402
from .load import HOW_TO_GET_WRK  # noqa: E402
from .load import find_wrk  # noqa: E402
from .nullpool_app import create_app_with_nullpool  # noqa: E402
from .report import table  # noqa: E402
from .timing import time_per_request  # noqa: E402

HOSTS, WORKERS, THREADS = 4, 2, 4
# --quick only checks that it runs: fewer processes to start and stop.
QUICK_HOSTS, QUICK_WORKERS = 2, 1
DATABASES = {"DATABASE_URL": "messages", "AUDIT_DATABASE_URL": "audit"}
PRE_PING_ON = {"pool_pre_ping": True}
PER_DATABASE = "PgBouncer server connections per database"
CONCURRENCIES = [64, 128, 256]
CASES = {
    "straight to PostgreSQL": {"through_pgbouncer": False},
    "PgBouncer, QueuePool (step 8)": {"through_pgbouncer": True},
    "PgBouncer, QueuePool, pre-ping": {
        "through_pgbouncer": True,
        "env": {"FLASK_ENGINE_OPTIONS": '{"pool_pre_ping": true}'},
    },
    "PgBouncer, NullPool": {
        "through_pgbouncer": True,
        "app": "bench.nullpool_app:create_app_with_nullpool()",
    },
}


def run_wrk_on_every_instance(wrk, urls, connections, seconds, requests_at_most):
    """Drive every instance at once with wrk; return the combined summary."""
    each = max(1, connections // len(urls))
    threads = min(each, 2)
    processes = [
        subprocess.Popen(
            [
                *(wrk, "--threads", str(threads), "--connections", str(each)),
                *("--duration", f"{seconds}s", "--timeout", "10s"),
                *("--script", str(BOUNDED_SCRIPT), url),
            ],
            env={"WRK_REQUESTS_PER_THREAD": str(requests_at_most // threads)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for url in urls
    ]
    summaries = []
    for process in processes:
        output, _ = process.communicate(timeout=seconds + 60)
        summaries.append(json.loads(output.strip().splitlines()[-1]))
    return {
        # Answered with a 2xx, per second: wrk counts a 503 as a request.
        "ok per second": round(
            sum(
                (s["requests"] - s["non_2xx"]) / (s["duration_us"] / 1e6)
                for s in summaries
            )
        ),
        # The worst instance's: the pooled latencies are not available.
        "p99 ms": round(max(s["p99_us"] for s in summaries) / 1000, 1),
        "errors": sum(summary["errors"] for summary in summaries),
        "requests": sum(summary["requests"] for summary in summaries),
    }


def measure_case(server, case, urls_path, connections, seconds, folder, shape):
    """Start the case's instances (and PgBouncer), load them, stop them."""

    pgbouncer = PgBouncer(server) if case["through_pgbouncer"] else None
    try:
        reach = pgbouncer if pgbouncer is not None else server
        env = {
            "DATABASE_URL": reach.url_of("messages"),
            "AUDIT_DATABASE_URL": reach.url_of("audit"),
        }
        if pgbouncer is not None:
            env["FLASK_BEHIND_POOLER"] = "true"
        env.update(case.get("env", {}))
        hosts, workers = shape
        instances = Instances(env, hosts, workers, THREADS, folder, app=case.get("app"))
        try:
            # Every worker warm: its imports done, its pool's first connection
            # open, before the clock starts.
            for url in instances.urls:
                for _ in range(workers * 4):
                    requests.get(url + urls_path, timeout=30)
            with ConnectionWatcher(server) as watcher:
                summary = run_wrk_on_every_instance(
                    find_wrk(),
                    [url + urls_path for url in instances.urls],
                    connections,
                    seconds,
                    requests_at_most=200_000,
                )
        finally:
            instances.stop()
        summary["most server connections"] = watcher.most_in_all
        return summary
    finally:
        if pgbouncer is not None:
            pgbouncer.destroy()


def measure_in_process(server, quick):
    """Time GET /messages/<id> through Flask's test client, one process,
    straight to PostgreSQL and through PgBouncer, the pools side by side."""
    pgbouncer = PgBouncer(server)
    apps = {}
    try:
        direct = {key: server.url_of(name) for key, name in DATABASES.items()}
        pooled = {key: pgbouncer.url_of(name) for key, name in DATABASES.items()}
        apps = {
            "PgBouncer, QueuePool (step 8)": create_app(
                {**pooled, "BEHIND_POOLER": True}
            ),
            "PgBouncer, QueuePool, pre-ping": create_app(
                {**pooled, "BEHIND_POOLER": True, "ENGINE_OPTIONS": PRE_PING_ON}
            ),
            "PgBouncer, NullPool": create_app_with_nullpool(
                {**pooled, "BEHIND_POOLER": True}
            ),
            "straight to PostgreSQL, QueuePool, pre-ping": create_app(direct),
        }
        clients = {name: app.test_client() for name, app in apps.items()}
        path = "/messages/1"
        requests_each, rounds = (2, 30) if quick else (10, 300)
        return time_per_request(clients, path, requests_each, rounds)
    finally:
        for app in apps.values():
            dispose_engines(app)
        pgbouncer.destroy()


def measure(quick):
    """Run every case at every concurrency, the cases taking turns."""

    concurrencies = CONCURRENCIES[:1] if quick else CONCURRENCIES
    seconds, rounds = (1, 1) if quick else (5, 3)
    hosts, workers = (QUICK_HOSTS, QUICK_WORKERS) if quick else (HOSTS, WORKERS)
    server = SmallServer(find_binaries(), free_port())
    samples = []
    try:
        urls = {
            key: server.create_app_database(name) for key, name in DATABASES.items()
        }
        initialize_databases(create_app, urls)
        app = create_app(urls)
        created = app.test_client().post("/messages", json={"text": "scaled out"})
        path = created.headers["Location"]
        assert path == "/messages/1"
        dispose_engines(app)
        in_process = measure_in_process(server, quick)
        with tempfile.TemporaryDirectory() as folder:
            # Round after round, every level, every case in turn: what slows
            # the machine down for a while slows every case alike.
            for _ in range(rounds):
                for connections in concurrencies:
                    for name, case in CASES.items():
                        summary = measure_case(
                            server,
                            case,
                            path,
                            connections,
                            seconds,
                            folder,
                            (hosts, workers),
                        )
                        samples.append(
                            {"case": name, "concurrency": connections, **summary}
                        )
    finally:
        server.destroy()
    rows = [
        median_row(
            [
                sample
                for sample in samples
                if (sample["case"], sample["concurrency"]) == (name, connections)
            ]
        )
        for connections in concurrencies
        for name in CASES
    ]
    return {
        "quick": quick,
        "hosts": hosts,
        "workers": workers,
        "threads": THREADS,
        "seconds per level": seconds,
        "rounds": rounds,
        "path": "GET /messages/<id>",
        "max_connections": APP_CONNECTIONS_ALLOWED + 3,
        "server connections for the app role": APP_CONNECTIONS_ALLOWED,
        PER_DATABASE: POOL_SIZE,
        # What the instances' pools could open straight to the server: each
        # worker's two engines, and each master's connection from wsgi.py.
        "connections the pools may open": hosts
        * (
            workers * 2 * (POOL_DEFAULTS["pool_size"] + POOL_DEFAULTS["max_overflow"])
            + 1
        ),
        "in_process": in_process,
        "rows": rows,
        "samples": samples,
    }


def median_row(samples):
    """Return one case's row at one level: the median of each figure, except
    errors and the most server connections, summed and maximal."""
    row = {"case": samples[0]["case"], "concurrency": samples[0]["concurrency"]}
    for key in ("ok per second", "p99 ms"):
        row[key] = statistics.median(sample[key] for sample in samples)
    row["errors"] = sum(sample["errors"] for sample in samples)
    row["requests"] = sum(sample["requests"] for sample in samples)
    row["most server connections"] = max(
        sample["most server connections"] for sample in samples
    )
    return row


def markdown(results):
    """Render the results as Markdown."""
    return (
        "# Scaling out: step 8 on one small PostgreSQL\n\n"
        f"Gunicorn instances: {results['hosts']}, each with workers:"
        f" {results['workers']}, each with threads: {results['threads']}."
        f" {results['path']}, wrk on every instance at once, seconds per level:"
        f" {results['seconds per level']}, rounds: {results['rounds']}; each"
        " figure is the median over the rounds (errors and requests: their sums;"
        " most server connections: the most). PostgreSQL's"
        f" max_connections: {results['max_connections']}"
        f" ({results['server connections for the app role']} for the app's"
        f" role); the pools may open {results['connections the pools may open']};"
        " PgBouncer opens at most"
        f" {results[PER_DATABASE]} per database."
        + (f" {QUICK_NOTE}" if results["quick"] else "")
        + "\n\n"
        + table(results["rows"])
        + "\n## In one process\n\nµs per GET /messages/1 through Flask's test"
        " client, the cases taking turns: each case's fastest request; ratio to"
        " step 8's.\n\n"
        + table(
            [{"case": name, **values} for name, values in results["in_process"].items()]
        )
    )


def chart(results, path):
    """Draw throughput, p99, errors and server connections by concurrency."""
    figure, axes = plt.subplots(1, 4, figsize=(22, 5))
    metrics = [
        ("ok per second", "answered 2xx per second"),
        ("p99 ms", "p99 latency, ms (worst instance)"),
        ("errors", "errors (wrk: non-2xx and socket)"),
        ("most server connections", "most server connections seen"),
    ]
    # A marker and a size per case, largest first, so that cases with the
    # same value (0 errors) stay visible one inside the other.
    styles = [("o", 11), ("s", 8), ("^", 6), ("D", 4)]
    for ax, (key, label) in zip(axes, metrics, strict=True):
        for case, (marker, size) in zip(CASES, styles, strict=True):
            rows = [row for row in results["rows"] if row["case"] == case]
            levels = [row["concurrency"] for row in rows]
            ax.plot(
                levels,
                [row[key] for row in rows],
                marker=marker,
                markersize=size,
                label=case,
            )
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(level) for level in levels])
        ax.set_xlabel("concurrent connections, all instances")
        ax.set_title(label)
        if key == "most server connections":
            ax.axhline(
                results["server connections for the app role"],
                color="grey",
                linestyle="--",
                label="the app role's limit",
            )
    handles, labels = axes[3].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels))
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(out, quick):
    """Measure and write scale_out.json, .md and .png; return their paths."""
    if find_wrk() is None:
        raise SystemExit(HOW_TO_GET_WRK)
    results = measure(quick)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"scale_out.{suffix}" for suffix in ("json", "md", "png")]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(markdown(results))
    chart(results, paths[2])
    return paths


def main():
    """Read the command line, measure, and name the outputs."""
    run_part("python -m bench.scale_out", __doc__, run)


if __name__ == "__main__":
    main()
