"""What the README quotes and promises is what the repository holds."""

import importlib
import json
import re

import pytest

from bench.report import table
from testbed import ROOT

from .conftest import is_slow
from .steps import STEPS

README = (ROOT / "README.md").read_text()
NUMBERS = {11: "eleven", 12: "twelve", 10: "ten"}

# A quoted block names its source on its first line: "# step03_teardown/db.py".
QUOTED_BLOCK = re.compile(r"```python\n# (step\d\d_\w+/[\w/]+\.py)\n(.*?)```", re.S)
QUOTES = QUOTED_BLOCK.findall(README)


def test_the_readme_quotes_every_step():
    assert {path.split("/")[0] for path, _ in QUOTES} == set(STEPS)


@pytest.mark.parametrize(("path", "code"), QUOTES, ids=[path for path, _ in QUOTES])
def test_quoted_code_is_what_the_step_contains(path, code):
    assert code in (ROOT / path).read_text()


def test_the_readme_sets_up_with_two_make_commands():
    block = re.search(r"## Two commands\n.*?```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test"):
        assert re.search(rf"^{target}: ", makefile, re.M)


@pytest.mark.parametrize("step", STEPS)
def test_the_readme_names_each_steps_concept_tests(step):
    assert f"tests/test_{step}.py" in README
    assert (ROOT / "tests" / f"test_{step}.py").is_file()


def test_every_test_the_readme_names_exists():
    test_sources = "".join(path.read_text() for path in (ROOT / "tests").glob("*.py"))
    named = set(re.findall(r"(?:`|::)(test_\w+)", README))
    assert named
    for name in named:
        assert f"def {name}(" in test_sources, name


# "step04_pooling/db.py:53` `app.teardown_appcontext(remove_session)": a line
# of a step, and the code the README says is on it.
LINE_REFERENCES = re.findall(r"`(step\d\d_\w+/[\w/]+\.py):(\d+)` `([^`]+)`", README)


def test_the_readme_has_line_references():
    assert len(LINE_REFERENCES) >= 7


@pytest.mark.parametrize(
    ("path", "line", "code"),
    LINE_REFERENCES,
    ids=[f"{path}:{line}" for path, line, _ in LINE_REFERENCES],
)
def test_each_line_the_readme_points_at_holds_the_code_it_names(path, line, code):
    lines = (ROOT / path).read_text().splitlines()

    assert code in lines[int(line) - 1]


def reference_table(results_file, key, text, time_format):
    """Check a README table against a reference run of the benchmark.

    Each row names a case, then its time and ratio on SQLite, then on
    PostgreSQL; ``time_format`` writes a measured µs as the table does.
    """
    results = json.loads((ROOT / "bench" / "results" / results_file).read_text())
    by_backend = {backend["backend"]: backend[key] for backend in results["backends"]}
    rows = re.findall(
        r"^\| ([^|]+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M
    )

    assert not results["quick"]
    assert [name for name, *_ in rows] == list(by_backend["sqlite"])
    for name, *cells in rows:
        for backend, (time, ratio) in zip(
            ("sqlite", "postgresql"), (cells[:2], cells[2:]), strict=True
        ):
            measured = by_backend[backend][name]
            assert time_format(measured["µs per request"]) == time, (backend, name)
            assert measured["ratio"] == float(ratio), (backend, name)


def test_the_readmes_benchmark_table_is_the_reference_run():
    section = README.split("## The benchmark")[1].split("What the rows say")[0]
    reference_table("results.json", "in_process", section, str)


def test_the_survival_figures_are_those_of_the_tests():
    survival = importlib.import_module("tests.test_what_it_survives")
    requests = survival.THREADS * survival.REQUESTS_PER_THREAD
    total = requests * len(survival.LOAD_RUNS)

    assert (
        f"{survival.THREADS} threads, each sending {survival.REQUESTS_PER_THREAD}"
        in (" ".join(README.split()))
    )
    assert f"a bad request of {NUMBERS[len(survival.BAD_REQUESTS)]} kinds" in (
        " ".join(README.split())
    )
    assert f"{total:,} requests in all" in README


def test_step_4s_ratios_and_pid_check_are_those_of_the_reference_run():
    results = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    by_backend = {backend["backend"]: backend for backend in results["backends"]}
    section = README.split("## The benchmark")[1].split("## Do you need")[0]
    text = " ".join(section.split())

    def over(backend, name):
        timings = by_backend[backend]["in_process"]
        step4 = timings["step04_pooling"]["µs per request"]
        return f"{step4 / timings[name]['µs per request']:.3f}×"

    for name in ("bare scoped_session", "Flask-SQLAlchemy 3.1"):
        assert f"{over('sqlite', name)} on SQLite" in text, name
        assert f"{over('postgresql', name)} on PostgreSQL" in text, name
    sqlite, postgresql = by_backend["sqlite"], by_backend["postgresql"]
    pid_check = sqlite["pid check"]
    assert pid_check["claim() calls per request"] == 2
    assert f"and a comparison: {pid_check['µs per claim()']:.2f} µs" in text
    assert f"That is {pid_check['µs per request']:.1f} µs" in text
    shares = [
        backend["pid check"]["share of step 4's request"]
        for backend in (sqlite, postgresql)
    ]
    assert f"{shares[0]:.2%} of step 4's request on SQLite and {shares[1]:.2%}" in text


def test_the_load_figures_are_those_of_the_reference_run():
    results = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    [postgresql] = [b for b in results["backends"] if b["backend"] == "postgresql"]
    load = postgresql["load"]
    text = " ".join(README.split())

    most = max(row["most server connections"] for row in load["rows"])
    assert f"never saw more than {most} connections" in text
    assert f"against the {load['server connections allowed']} its settings" in text
    assert all(row["errors"] == 0 for row in load["rows"])
    p99 = {row["concurrency"]: row["p99 ms"] for row in load["rows"]}
    assert f"({round(p99[64])} ms at 64 connections)" in text
    levelled = [row["requests per second"] for row in load["rows"][1:]]
    assert f"between {min(levelled):,} and {max(levelled):,} requests a second" in text


def test_the_per_test_costs_are_the_reference_run():
    section = README.split("**What it costs per test**")[1].split("**Try it.**")[0]
    reference_table("per_test.json", "per_test", section, lambda us: f"{us / 1000:.1f}")


def test_the_scale_out_tables_are_the_reference_run():
    results = json.loads((ROOT / "bench" / "results" / "scale_out.json").read_text())
    section = README.split("**Scaling out, measured.**")[1].split("**Where next.**")[0]

    assert not results["quick"]
    assert table(results["rows"]) in section
    in_process = [
        {"case": name, **values} for name, values in results["in_process"].items()
    ]
    assert table(in_process) in section


def test_what_the_readme_reads_in_the_scale_out_run_is_what_it_holds():
    results = json.loads((ROOT / "bench" / "results" / "scale_out.json").read_text())
    section = " ".join(
        README.split("What the rows say:")[1].split("**Where next.**")[0].split()
    )
    rows = {(row["case"], row["concurrency"]): row for row in results["rows"]}
    levels = sorted({row["concurrency"] for row in results["rows"]})
    step8 = "PgBouncer, QueuePool (step 8)"

    def ratios(case, over):
        return [
            rows[(case, level)]["ok per second"] / rows[(over, level)]["ok per second"]
            for level in levels
        ]

    pooled = ratios(step8, "straight to PostgreSQL")
    assert f"{min(pooled):.1f} to {max(pooled):.1f} times the answers" in section
    nullpool = ratios("PgBouncer, NullPool", step8)
    assert f"{min(nullpool):.2f} to {max(nullpool):.2f} times" in section
    pre_ping = ratios("PgBouncer, QueuePool, pre-ping", step8)
    assert ", ".join(f"{ratio:.2f}" for ratio in pre_ping[:-1]) in section
    assert f"and {pre_ping[-1]:.2f} times as many" in section
    in_process = results["in_process"]
    assert list(in_process)[0] == step8
    for case in ("PgBouncer, NullPool", "PgBouncer, QueuePool, pre-ping"):
        assert f"took {in_process[case]['ratio']:.2f} times as long" in section
    for case in (step8, "PgBouncer, QueuePool, pre-ping"):
        assert all(rows[(case, level)]["errors"] == 0 for level in levels)
    most = max(
        row["most server connections"]
        for row in results["rows"]
        if row["case"] != "straight to PostgreSQL"
    )
    assert f"never more than {most} server connections" in section


def test_step_8s_connection_arithmetic_is_that_of_the_drills_and_the_harness():
    drills = importlib.import_module("tests.test_step08_pgbouncer")
    harness = importlib.import_module("testbed.pgbouncer")
    pool = importlib.import_module("step08_pgbouncer.db").POOL_DEFAULTS
    harness_source = (ROOT / "testbed" / "pgbouncer.py").read_text()
    section = " ".join(
        README.split("## Step 8")[1].split("**The settings, and why.**")[0].split()
    )
    per_worker = pool["pool_size"] + pool["max_overflow"]
    opened = drills.HOSTS * drills.WORKERS * per_worker * 2

    assert (
        f"{drills.HOSTS} hosts × {drills.WORKERS} workers ×"
        f" ({pool['pool_size']} + {pool['max_overflow']}) × 2 databases = {opened},"
        f" + {drills.HOSTS} masters" in section
    )
    assert f"the same {opened + drills.HOSTS}" in section
    assert (
        f"{harness.APP_CONNECTIONS_ALLOWED} of {harness.MAX_CONNECTIONS} here"
        in section
    )
    assert f"{harness.POOL_SIZE} × 2 = {harness.POOL_SIZE * 2}" in section
    assert "max_client_conn = 1000" in harness_source
    assert "(`max_client_conn`, 1,000 here)" in section
    wait = re.search(r"query_wait_timeout = (\d+)", harness_source).group(1)
    assert f"`query_wait_timeout` ({wait} s here)" in section
    drill_table = " ".join(
        README.split("**The drills.**")[1].split("**Scaling out")[0].split()
    )
    requests = drills.CLIENTS * drills.REQUESTS_EACH
    assert f"{drills.CLIENTS} clients × {drills.REQUESTS_EACH} writes" in drill_table
    assert f"all {requests} answered 201" in drill_table
    assert f"more than {harness.POOL_SIZE} server connections per database" in (
        drill_table
    )


def test_the_slow_tests_run_first_two_at_a_time(request):
    # The order this run's collection ended in, as each worker has it.
    slow = [is_slow(item) for item in request.session.items]
    if all(slow) or not any(slow):
        pytest.skip("this run collected tests of one kind only: nothing to order")
    assert slow == sorted(slow, reverse=True)
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/pytest -n $(TEST_WORKERS) --maxschedchunk 2" in makefile
    assert "`make test` hands the workers two tests at a time" in " ".join(
        README.split()
    )
