"""The benchmark runs and writes its three outputs (its numbers are not checked)."""

import json
import subprocess
import sys

import pytest

from bench.apps import CASES  # noqa: I001
from bench.async_views import ASYNC_SESSION_CASES
from bench.async_views import CASES as ASYNC_VIEW_CASES
from bench.command_line import QUICK_NOTE
from bench.command_line import QUICK_RESULTS
from bench.command_line import REFERENCE_RESULTS
from bench.command_line import parse
from bench.command_line import parser_for
from bench.helpers import CASES as HELPER_CASES
from bench.load import HOW_TO_GET_WRK
from bench.load import find_wrk
from bench.parity import APPS as PARITY_APPS
from bench.replicas import CASES as REPLICA_CASES
from bench.scale_out import CASES as SCALE_OUT_CASES
from testbed import ROOT
from testbed import mariadb
from testbed.pgbouncer import HOW_TO_GET_PGBOUNCER
from testbed.pgbouncer import find_pgbouncer
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.postgres import find_binaries

from .conftest import skip_or_fail


@pytest.mark.slow
# About a minute alone; up to two while the suite's other slow tests share
# the cores. The run itself stops after four (below).
@pytest.mark.timeout(300)
def test_the_quick_benchmark_writes_a_table_json_and_a_chart(tmp_path):
    if find_binaries() is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    if find_wrk() is None:
        skip_or_fail(HOW_TO_GET_WRK)
    if find_pgbouncer() is None:
        skip_or_fail(HOW_TO_GET_PGBOUNCER)
    if mariadb.find_binaries() is None:
        skip_or_fail(mariadb.HOW_TO_GET_MARIADB)

    completed = subprocess.run(
        # Ten rounds in-process, not the quick run's thirty: the outputs are
        # what is checked here, and each round on three databases costs.
        [sys.executable, "-m", "bench", "--quick", "--rounds", "10"]
        + ["--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert completed.returncode == 0, completed.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert [backend["backend"] for backend in results["backends"]] == [
        "sqlite",
        "postgresql",
        "mariadb",
    ]
    table = (tmp_path / "results.md").read_text()
    for backend in results["backends"]:
        assert list(backend["in_process"]) == list(CASES)
        # The pid check is timed on its own and counted in a real request.
        assert backend["pid check"]["claim() calls per request"] > 0
    # The load test counts connections in pg_stat_activity: not on MariaDB.
    for backend in results["backends"][:2]:
        assert [row["concurrency"] for row in backend["load"]["rows"]] == [1, 8, 32, 64]
    assert "load" not in results["backends"][2]
    for name in CASES:
        assert f"| {name} |" in table
    # Too short to judge a goal by: it says so, in each output and as it
    # ends, and judges none.
    for name in (
        "results.md",
        "per_test.md",
        "helpers.md",
        "parity.md",
        "async_views.md",
        "scale_out.md",
        "replicas.md",
    ):
        assert QUICK_NOTE in (tmp_path / name).read_text(), name
    assert completed.stdout.splitlines()[-1] == QUICK_NOTE
    assert "goals" not in table
    assert "Traceback" not in completed.stderr
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG\r\n")
    # What a clean database costs per test, three ways, on both backends.
    per_test = json.loads((tmp_path / "per_test.json").read_text())
    assert [backend["backend"] for backend in per_test["backends"]] == [
        "sqlite",
        "postgresql",
    ]
    for backend in per_test["backends"]:
        assert list(backend["per_test"]) == [
            "isolated(app)",
            "a fresh database per test",
            "deleting the rows after each test",
        ]
    assert "| isolated(app) |" in (tmp_path / "per_test.md").read_text()
    # Step 10's helpers and the extension's, per request and alone, on all
    # three backends.
    helpers = json.loads((tmp_path / "helpers.json").read_text())
    assert [backend["backend"] for backend in helpers["backends"]] == [
        "sqlite",
        "postgresql",
        "mariadb",
    ]
    for backend in helpers["backends"]:
        for way in ("per request", "alone"):
            assert list(backend[way]) == list(HELPER_CASES), way
    # Step 4 against the extension and the bare app (and step 4 without its
    # request counter, and a control), pre-ping on and off, two ways on all
    # three backends; a quick run counts no instructions.
    parity = json.loads((tmp_path / "parity.json").read_text())
    assert [backend["backend"] for backend in parity["backends"]] == [
        "sqlite",
        "postgresql",
        "mariadb",
    ]
    for backend in parity["backends"]:
        for setting in ("pre-ping on", "pre-ping off"):
            assert list(backend["timed"][setting]) == list(PARITY_APPS)
    assert "skipped" in parity["instructions"]
    # An async view, Flask's default against steps 9 and 10's, and the
    # sync view, with threads and under gevent, on SQLite and PostgreSQL.
    timed_async = json.loads((tmp_path / "async_views.json").read_text())
    assert [backend["backend"] for backend in timed_async["backends"]] == [
        "sqlite",
        "postgresql",
    ]
    for backend in timed_async["backends"]:
        for way in ("threads", "gevent"):
            assert list(backend["async views"][way]) == list(ASYNC_VIEW_CASES), way
    # The read through an AsyncSession, each pattern of the example and
    # Lite's, against step 9's sync Session: on PostgreSQL.
    assert "AsyncSession" not in timed_async["backends"][0]
    for way in ("threads", "gevent"):
        assert list(timed_async["backends"][1]["AsyncSession"][way]) == list(
            ASYNC_SESSION_CASES
        )
    # Step 8's instances on one small PostgreSQL, each case once.
    scaled = json.loads((tmp_path / "scale_out.json").read_text())
    assert [row["case"] for row in scaled["rows"]] == list(SCALE_OUT_CASES)
    assert (tmp_path / "scale_out.png").read_bytes().startswith(b"\x89PNG\r\n")
    # Step 12 against step 11 on a primary and a standby: in-process, and
    # under load, where the standby's own count shows the reads reached it.
    routed = json.loads((tmp_path / "replicas.json").read_text())
    assert list(routed["in-process"]["reads"]) == list(REPLICA_CASES)
    for row in routed["under load"]:
        on = "standby" if row["case"] == REPLICA_CASES[2] else "primary"
        off = "primary" if on == "standby" else "standby"
        assert row[f"transactions on the {on}"] > row["requests"]
        assert row[f"transactions on the {off}"] < 20


@pytest.mark.parametrize(
    ("arguments", "out"),
    [
        ([], REFERENCE_RESULTS),
        (["--quick"], QUICK_RESULTS),
        (["--quick", "--out", "elsewhere"], "elsewhere"),
    ],
)
def test_a_quick_run_leaves_the_reference_results_alone(monkeypatch, arguments, out):
    monkeypatch.setattr(sys, "argv", ["python -m bench", *arguments])

    assert parse(parser_for("python -m bench", "")).out == out
    # Nor does git see what a quick run writes.
    assert f"{QUICK_RESULTS}/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize(
    "part",
    [
        "bench.per_test",
        "bench.helpers",
        "bench.parity",
        "bench.async_views",
        "bench.scale_out",
    ],
)
def test_each_parts_help_shows_the_commands_of_its_docstring(part):
    completed = subprocess.run(
        [sys.executable, "-m", part, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    # One command a line, as the docstring writes them.
    assert f"\n    python -m {part} --quick " in completed.stdout
