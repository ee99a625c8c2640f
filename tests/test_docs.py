"""What the Markdown pages quote and promise is what the repository holds.

Every page: the top README (the map), each step's README, and the
reference pages in docs/. Their quotes, line references, test names and
links are checked on every page; each figure against the run it comes from.
"""

import glob
import importlib
import json
import os
import re
import shutil
import subprocess
import time
import types

import pytest
from sqlalchemy.engine import make_url

from bench import async_views as bench_async_views
from bench import parity as bench_parity
from bench.report import table
from testbed import ROOT
from testbed.pgbouncer import HOW_TO_GET_PGBOUNCER
from testbed.pgbouncer import find_pgbouncer
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.postgres import find_binaries as find_postgres
from testbed.screenshots import SMALL_POOL_FAILING_FAST

from .conftest import is_slow
from .conftest import skip_or_fail
from .flask_sqlalchemy_shim import step10_plan as plan
from .steps import STEPS
from .try_it import MAKE_RUN_PORT
from .try_it import Reader
from .try_it import commands
from .try_it import copy_of_the_repository
from .try_it import engine_options
from .try_it import inline_commands
from .try_it import try_it_sections
from .workers import worker_answers

# Every page a reader reads; bench/results holds the benchmark's outputs.
PAGES = sorted(
    path.relative_to(ROOT).as_posix()
    for path in [
        ROOT / "README.md",
        *ROOT.glob("step[0-9][0-9]_*/README.md"),
        ROOT / "async_session" / "README.md",
        *ROOT.glob("docs/*.md"),
    ]
)
TEXT = {page: (ROOT / page).read_text() for page in PAGES}
# The benchmark's Markdown outputs, written by make bench, not by hand.
RESULT_TABLES = [
    "results",
    "per_test",
    "helpers",
    "parity",
    "async_views",
    "scale_out",
    "replicas",
]
README = TEXT["README.md"]
NUMBERS = {11: "eleven", 12: "twelve", 10: "ten"}


def test_every_markdown_file_is_a_checked_page_or_a_benchmark_output():
    found = set()
    for folder, subfolders, files in os.walk(ROOT):
        # The virtual environment, caches, and what runs leave behind.
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".")
            and name not in {"__pycache__", "instance", "quick-results"}
        ]
        found |= {
            os.path.relpath(os.path.join(folder, name), ROOT)
            for name in files
            if name.endswith(".md")
        }
    outputs = {path for path in found if path.startswith("bench/results/")}

    assert found - outputs == set(PAGES)
    assert outputs == {f"bench/results/{name}.md" for name in RESULT_TABLES}


def page(path):
    """Return a page's text."""
    return TEXT[path]


def words(text):
    """Return the text with its whitespace made single spaces."""
    return " ".join(text.split())


def section(path, start, end=None):
    """Return the part of a page from ``start`` (or its top) up to ``end``."""
    after = page(path).split(start, 1)[1] if start else page(path)
    return after if end is None else after.split(end, 1)[0]


# A quoted block names its source on its first line: "# step03_teardown/db.py".
QUOTED_BLOCK = re.compile(r"```python\n# (step\d\d_\w+/[\w/]+\.py)\n(.*?)```", re.S)
QUOTES = [
    (page_path, path, code)
    for page_path in PAGES
    for path, code in QUOTED_BLOCK.findall(TEXT[page_path])
]


def test_each_steps_readme_quotes_its_own_code():
    for step in STEPS:
        quoted = {path for page_path, path, _ in QUOTES if page_path.startswith(step)}
        assert quoted, step
        assert {path.split("/")[0] for path in quoted} == {step}


@pytest.mark.parametrize(
    ("page_path", "path", "code"),
    QUOTES,
    ids=[f"{page_path}:{path}" for page_path, path, _ in QUOTES],
)
def test_quoted_code_is_what_the_step_contains(page_path, path, code):
    assert code in (ROOT / path).read_text()


def test_the_readme_sets_up_with_two_make_commands():
    block = re.search(r"## Two commands\n.*?```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test"):
        assert re.search(rf"^{target}: ", makefile, re.M)


@pytest.mark.parametrize("step", STEPS)
def test_each_step_has_a_readme_that_names_its_tests_its_notebook_and_its_diff(step):
    text = page(f"{step}/README.md")
    number = STEPS.index(step)

    assert text.startswith(f"# Step {number + 1}: ")
    assert f"tests/test_{step}.py" in text
    assert (ROOT / "tests" / f"test_{step}.py").is_file()
    notebook = f"{step[4:6]}_{step[7:]}.ipynb"
    assert (ROOT / "notebooks" / notebook).is_file()
    assert notebook in text
    assert "**Try it.**" in text
    if number:
        assert re.search(rf"diff -ruN .*{STEPS[number - 1]} {step}\n", text)
    # The map links to it.
    assert f"]({step}/)" in README


# The extension's test files and tests that its plan names: the run of its
# tests fails if the release has a file the plan does not name, or has not
# a test it names.
EXTENSION_TESTS = {
    name.removesuffix(".py")
    for key in [*plan.APPLIES, *plan.DOES_NOT_APPLY, *plan.EXPECTED_FAILURES]
    for name in key.split("::")
}


def test_every_test_a_page_names_exists():
    test_sources = "".join(path.read_text() for path in (ROOT / "tests").glob("*.py"))
    for page_path in PAGES:
        for name in set(re.findall(r"(?:`|::)(test_\w+)", TEXT[page_path])):
            if name not in EXTENSION_TESTS:
                assert f"def {name}(" in test_sources, (page_path, name)


def test_the_figures_of_the_extensions_own_tests_are_those_its_run_holds_to():
    outcomes = plan.OUTCOMES
    applies = outcomes["passed"] + outcomes["xfailed"]
    figures = (
        f"{applies} items apply, {outcomes['passed']} pass and"
        f" {outcomes['xfailed']} fail by design"
    )
    whole_files_left_out = [key for key in plan.DOES_NOT_APPLY if "::" not in key]
    files = len(plan.APPLIES) + len(whole_files_left_out)
    tests_left_out = len(plan.DOES_NOT_APPLY) - len(whole_files_left_out)

    for page_path in (
        "step10_helpers/README.md",
        "docs/tests.md",
        "docs/comparison.md",
    ):
        assert figures in words(page(page_path)), page_path
    assert f"the {len(plan.APPLIES)} of its {files} test files" in words(
        page("step10_helpers/README.md")
    )
    assert (
        f"the {len(plan.APPLIES)} of its {files} that test what step 10"
        f" re-implements run, but {tests_left_out} tests of `test_session.py`"
    ) in words(page("docs/tests.md"))


# The files that name the repository's paths: code, configuration, pages,
# notebooks, scripts, templates.
NAMING_KINDS = (".py", ".toml", ".md", ".ipynb", ".sh", ".html", ".js", ".lua", ".conf")
# A path in one of the repository's folders: "docs/databases.md",
# "tests/test_stepNN_*.py", "step01_engine/db.py:15", "bench/results/".
NAMED_PATH = re.compile(
    r"(?<![\w/.$-])((?:docs|tests|testbed|bench|notebooks|step\d\d_[a-z_]+|\.ci)"
    r"/[\w/.*{}\[\]-]*)"
)


def git(*arguments, check=True):
    """Return what a git command prints in the repository, line by line."""
    return subprocess.run(
        ["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=check
    ).stdout.splitlines()


def test_every_path_a_repository_file_names_exists():
    naming = [
        path
        for path in git("ls-files")
        if path.endswith(NAMING_KINDS)
        or os.path.basename(path) == "Makefile"
        or path.startswith(".ci/")
    ]
    named = {}
    for path in naming:
        for found in NAMED_PATH.findall((ROOT / path).read_text()):
            named.setdefault(found.rstrip("."), set()).add(path)
    missing = {}
    for found, where in named.items():
        if "{" in found:
            # Made in code: f"tests/test_{step}.py".
            continue
        # stepNN: any step's two digits.
        pattern = found.replace("NN", "[0-9][0-9]")
        if glob.has_magic(pattern):
            exists = bool(glob.glob(pattern, root_dir=ROOT))
        else:
            exists = (ROOT / pattern).exists()
        if not exists:
            missing[found] = sorted(where)
    # What runs write is not in the repository, and git ignores it
    # (bench/quick-results/); as a folder, it has no slash in prose.
    as_folders = [found.rstrip("/") + "/" for found in missing]
    ignored = git("check-ignore", "--no-index", *missing, *as_folders, check=False)
    written = {found.rstrip("/") for found in ignored}

    assert len(named) > 100
    assert {
        found: where
        for found, where in missing.items()
        if found.rstrip("/") not in written
    } == {}


# "step04_pooling/db.py:53` `app.teardown_appcontext(remove_session)": a line
# of a step, and the code the page says is on it.
LINE_REFERENCES = [
    (page_path, *reference)
    for page_path in PAGES
    for reference in re.findall(
        r"`(step\d\d_\w+/[\w/]+\.py):(\d+)` `([^`]+)`", TEXT[page_path]
    )
]


def test_the_pages_have_line_references():
    assert len(LINE_REFERENCES) >= 7


@pytest.mark.parametrize(
    ("page_path", "path", "line", "code"),
    LINE_REFERENCES,
    ids=[f"{page_path}:{path}:{line}" for page_path, path, line, _ in LINE_REFERENCES],
)
def test_each_line_a_page_points_at_holds_the_code_it_names(
    page_path, path, line, code
):
    lines = (ROOT / path).read_text().splitlines()

    assert code in lines[int(line) - 1]


def anchors(text):
    """Return the anchors GitHub gives a page's headings."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", strip_code(text), re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        anchor = anchor.replace(" ", "-")
        # A second heading of the same text gets -1, a third -2.
        number, unique = 0, anchor
        while unique in found:
            number += 1
            unique = f"{anchor}-{number}"
        found.add(unique)
    return found


def strip_code(text):
    """Return the text without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


# [text](target) and <img src="target">, where the target is in the repository.
LINKS = [
    (page_path, target)
    for page_path in PAGES
    for target in re.findall(
        r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", strip_code(TEXT[page_path])
    )
]
LINKS = [
    (page_path, next(part for part in target if part)) for page_path, target in LINKS
]
LINKS = [link for link in LINKS if not re.match(r"\w+:", link[1])]


@pytest.mark.parametrize(
    ("page_path", "target"), LINKS, ids=[f"{p}->{t}" for p, t in LINKS]
)
def test_every_relative_link_and_anchor_resolves(page_path, target):
    path, _, anchor = target.partition("#")
    # A bare #anchor is a heading of the same page.
    resolved = os.path.normpath(os.path.join(os.path.dirname(page_path), path))
    if not path:
        resolved = page_path
    assert (ROOT / resolved).exists(), target
    if (ROOT / resolved).is_dir():
        # GitHub shows a folder's README.md.
        resolved = os.path.join(resolved, "README.md")
        assert (ROOT / resolved).is_file(), target
    if anchor:
        assert anchor in anchors((ROOT / resolved).read_text()), target


def test_the_map_links_every_page():
    linked = {
        os.path.normpath(target.split("#")[0])
        for page_path, target in LINKS
        if page_path == "README.md"
    }
    for page_path in PAGES:
        if page_path != "README.md":
            assert {page_path, os.path.dirname(page_path)} & linked, page_path


# Counted with the code blocks: what a reader scrolls through.
@pytest.mark.parametrize(
    ("page_path", "most"),
    [("README.md", 2000)] + [(f"{step}/README.md", 1500) for step in STEPS],
)
def test_the_map_and_each_steps_readme_stay_short(page_path, most):
    assert len(page(page_path).split()) <= most


def reference_table(results_file, key, text, time_format):
    """Check a README table against a reference run of the benchmark.

    Each row names a case, then its time and ratio on each backend of the
    run, in the run's order; ``time_format`` writes a measured µs as the
    table does.
    """
    results = json.loads((ROOT / "bench" / "results" / results_file).read_text())
    by_backend = {backend["backend"]: backend[key] for backend in results["backends"]}
    cells = r" \| ([\d.]+) \| ([\d.]+)" * len(by_backend)
    rows = re.findall(rf"^\| ([^|]+?){cells} \|$", text, re.M)

    assert not results["quick"]
    assert [name for name, *_ in rows] == list(by_backend["sqlite"])
    for name, *cells in rows:
        for index, backend in enumerate(by_backend):
            time, ratio = cells[2 * index : 2 * index + 2]
            measured = by_backend[backend][name]
            assert time_format(measured["µs per request"]) == time, (backend, name)
            assert measured["ratio"] == float(ratio), (backend, name)


BENCHMARK = "docs/benchmark.md"


def test_the_benchmark_pages_table_is_the_reference_run():
    reference_table(
        "results.json",
        "in_process",
        section(BENCHMARK, "", "What the rows say"),
        str,
    )


def test_the_survival_figures_are_those_of_the_tests():
    survival = importlib.import_module("tests.test_what_it_survives")
    requests = survival.THREADS * survival.REQUESTS_PER_THREAD
    total = requests * len(survival.LOAD_RUNS)

    assert (
        f"{survival.THREADS} threads, each sending {survival.REQUESTS_PER_THREAD}"
        in words(page("docs/fault-drills.md"))
    )
    assert f"a bad request of {NUMBERS[len(survival.BAD_REQUESTS)]} kinds" in (
        words(page("docs/fault-drills.md"))
    )
    assert f"{total:,} requests in all" in page("docs/fault-drills.md")


def test_step_4s_ratios_and_pid_check_are_those_of_the_reference_run():
    results = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    by_backend = {backend["backend"]: backend for backend in results["backends"]}
    text = words(page(BENCHMARK))

    def over(backend, name):
        timings = by_backend[backend]["in_process"]
        step4 = timings["step04_pooling"]["µs per request"]
        return f"{step4 / timings[name]['µs per request']:.3f}×"

    for name in ("bare scoped_session", "Flask-SQLAlchemy 3.1"):
        assert f"{over('sqlite', name)} on SQLite" in text, name
        assert f"{over('postgresql', name)} on PostgreSQL" in text, name
        assert f"{over('mariadb', name)} on MariaDB" in text, name
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


def test_the_cost_of_the_app_context_scope_is_that_of_the_reference_run():
    results = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    ratios = []
    for backend in results["backends"]:
        timings = backend["in_process"]
        ratios.append(
            timings["bare, app-context scope"]["µs per request"]
            / timings["bare scoped_session"]["µs per request"]
        )
    cited = (
        f"{ratios[0]:.3f}× on SQLite, {ratios[1]:.3f}× on PostgreSQL"
        f" and {ratios[2]:.3f}× on MariaDB"
    )

    assert cited in words(page(BENCHMARK))
    assert cited in words(page("step09_app_context/README.md"))


def test_the_load_figures_are_those_of_the_reference_run():
    results = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    [postgresql] = [b for b in results["backends"] if b["backend"] == "postgresql"]
    load = postgresql["load"]
    text = words(page(BENCHMARK))

    most = max(row["most server connections"] for row in load["rows"])
    assert f"never saw more than {most} connections" in text
    assert f"against the {load['server connections allowed']} its settings" in text
    assert all(row["errors"] == 0 for row in load["rows"])
    p99 = {row["concurrency"]: row["p99 ms"] for row in load["rows"]}
    assert f"({round(p99[64])} ms at 64 connections)" in text
    levelled = [row["requests per second"] for row in load["rows"][1:]]
    assert f"between {min(levelled):,} and {max(levelled):,} requests a second" in text


def helper_costs():
    """The reference run's step 10 helpers against the extension's, by backend."""
    results = json.loads((ROOT / "bench" / "results" / "helpers.json").read_text())
    assert not results["quick"]
    return {backend["backend"]: backend for backend in results["backends"]}


def test_the_helpers_costs_table_is_the_reference_run():
    by_backend = helper_costs()
    text = page(BENCHMARK)

    assert list(by_backend) == ["sqlite", "postgresql", "mariadb"]
    for case in by_backend["sqlite"]["alone"]:
        alone = [backend["alone"][case] for backend in by_backend.values()]
        cells = [
            f"{timing['step 10 µs']} / {timing['Flask-SQLAlchemy 3.1 µs']}"
            f" | {timing['ratio']:.3f}"
            for timing in alone
        ]
        per_request = ", ".join(
            f"{backend['per request'][case]['ratio']:.3f}"
            for backend in by_backend.values()
        )
        assert f"| {case} | {' | '.join(cells)} | {per_request} |" in text, case


def test_the_helpers_costs_cited_are_the_reference_runs():
    by_backend = helper_costs()
    text = words(page(BENCHMARK))
    readme = words(page("step10_helpers/README.md"))
    sqlite = by_backend["sqlite"]

    alone = [
        backend["alone"][case]["ratio"]
        for backend in by_backend.values()
        for case in list(backend["alone"])[1:]
    ]
    span = f"from {min(alone):.3f}× to {max(alone):.3f}× the extension's"
    assert span in text
    count_shares = []
    for backend in by_backend.values():
        with_count = backend["alone"]["paginate(), with its COUNT"]["step 10 µs"]
        without = backend["alone"]["paginate(count=False)"]["step 10 µs"]
        count_shares.append(round((with_count - without) / with_count * 100))
    assert f"is {min(count_shares)} to {max(count_shares)}% of it" in text
    assert span in readme
    assert span in words(README)
    plain = ", ".join(
        f"{backend['per request']['no helper: session.get()']['ratio']:.3f}×"
        for backend in by_backend.values()
    )
    assert f"no helper costs {plain}" in text
    dearest = max(
        backend["per request"]["no helper: session.get()"]["ratio"]
        for backend in by_backend.values()
    )
    assert f"this step's app costs up to {dearest:.3f}×" in readme
    with_binds, one_engine = sqlite["making a Session, µs"].values()
    assert f"{with_binds} µs against {one_engine} µs" in text


def parity():
    """The reference run of step 4 against the extension, three ways."""
    results = json.loads((ROOT / "bench" / "results" / "parity.json").read_text())
    assert not results["quick"]
    return results


PARITY_CELLS = [
    (setting, key)
    for setting in ("pre-ping on", "pre-ping off")
    for key in ("fastest µs", "best third of rounds µs")
]
BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB"}


def test_the_parity_table_and_its_figures_are_the_reference_runs():
    results = parity()
    text = words(page(BENCHMARK))
    step4, extension = "step04_pooling", "Flask-SQLAlchemy 3.1"

    def over(name, base, backends=results["backends"]):
        """The app's µs over the base's, each backend and cell, in order."""
        return [
            backend["timed"][setting][name][key] / backend["timed"][setting][base][key]
            for backend in backends
            for setting, key in PARITY_CELLS
        ]

    for backend in results["backends"]:
        row = " | ".join(f"{cell:.3f}" for cell in over(step4, extension, [backend]))
        assert f"| {BACKEND_NAMES[backend['backend']]} | {row} |" in page(BENCHMARK)
    cells = over(step4, extension)
    assert f"within {max(abs(cell - 1) for cell in cells):.1%} of 1" in text
    missed = [row for row in bench_parity.goals(results) if row["met"] != "yes"]
    assert len(missed) == 1
    assert (
        f"is met in eleven of the twelve cells; the twelfth, MariaDB with pre-ping"
        f" off by the best third, measured {missed[0]['measured']}×"
    ) in text
    assert missed[0]["backend"] == "mariadb, pre-ping off"
    bare = over("bare scoped_session", extension)
    assert f"go from {min(bare):.3f}× to {max(bare):.3f}× the extension" in text

    sqlite = results["backends"][:1]
    outside = over(step4, extension, sqlite)[3]
    assert f"here: {outside:.3f}× on SQLite" in text
    bare_on_sqlite = over(step4, "bare scoped_session", sqlite)
    assert (
        f"and {min(bare_on_sqlite):.3f}× to {max(bare_on_sqlite):.3f}× the bare app"
    ) in text
    outside_way = [
        over(step4, extension, [backend])[3] for backend in results["backends"]
    ]
    assert (
        "the mean of the best third of rounds with pre-ping off, it is"
        f" {outside_way[0]:.3f}×, {outside_way[1]:.3f}× and {outside_way[2]:.3f}×"
    ) in words(README)

    counts = results["instructions"]
    again = counts[bench_parity.REPEATED]
    without = counts[bench_parity.NO_COUNTER]
    control = counts[bench_parity.CONTROL]
    for cited in (
        f"executes {counts[step4]:,} and then {again:,} instructions a request,"
        f" {counts[step4] / again - 1:.1%} apart",
        f"The extension counts {counts[extension]:,}, the bare app"
        f" {counts['bare scoped_session']:,}, step 4 without the panel's counter"
        f" {without:,}, and the control, step 4 with 5,000 idle lists, {control:,}:"
        f" all within {max(counts.values()) / min(counts.values()) - 1:.1%} of each"
        " other",
    ):
        assert cited in text, cited
    counter = over(bench_parity.NO_COUNTER, step4)
    controls = over(bench_parity.CONTROL, step4)
    assert (
        f"moved step 4 by {min(counter):.3f}× to {max(counter):.3f}× across the"
        f" backends and both ways; the control, step 4's own code, moved by"
        f" {min(controls):.3f}× to {max(controls):.3f}×"
    ) in text


def test_the_length_of_step_10s_helpers_cited_is_the_modules():
    lines = len((ROOT / "step10_helpers" / "helpers.py").read_text().splitlines())
    cited = [
        (page_path, int(number))
        for page_path in PAGES
        for number in re.findall(
            r"(\d+) lines (?:by hand|with its comments)", words(TEXT[page_path])
        )
    ]

    assert cited
    assert {number for _, number in cited} == {lines}, cited


def test_the_per_test_costs_are_the_reference_run():
    costs = section(
        "step07_testing/README.md", "**What it costs per test**", "**Try it.**"
    )
    reference_table("per_test.json", "per_test", costs, lambda us: f"{us / 1000:.1f}")


PGBOUNCER = "docs/pgbouncer.md"


def test_the_replicas_figures_are_the_reference_runs():
    results = json.loads((ROOT / "bench" / "results" / "replicas.json").read_text())
    reads, writes = results["in-process"]["reads"], results["in-process"]["writes"]
    page = TEXT["docs/benchmark.md"]
    section = " ".join(page[page.index("## Step 12's routing") :].split())
    step11, standby = (
        reads["step 11, the primary alone"],
        reads["step 12, reads on the standby"],
    )
    assert (
        f"{standby['µs per request']} µs against step 11's"
        f" {step11['µs per request']} ({standby['ratio']:.2f}×)"
    ) in section
    no_standby = reads["step 12, no standby configured"]["ratio"]
    assert f"step 12 with no standby {no_standby:.2f}×" in section
    cookie = reads["step 12, a wal_position cookie to check"]["ratio"]
    assert f"{cookie:.2f}× a read while" in section
    assert f"is {writes['step 12, reads on the standby']['ratio']:.2f}× step 11's" in (
        section
    )
    for row in results["under load, mean"]:
        for case in ("step 11, the primary alone", "step 12, reads on the standby"):
            median, spread = row[f"{case}, requests/s"].split(" ", 1)
            low, high = spread.strip("()").split(" to ")
            assert f"{int(median):,}" in section
            assert f"({int(low):,} to {int(high):,})" in section
    # The instructions, seed by seed: identical code's spread, and routing's.
    counts = results["instructions per read"].values()
    same_code = [
        each["step 12, no standby configured"] / each["step 11, the primary alone"] - 1
        for each in counts
    ]
    assert f"moved by {min(same_code):+.1%} to {max(same_code):+.1%}" in section
    extra = [
        each["step 12, reads on the standby"] - each["step 12, no standby configured"]
        for each in counts
    ]
    share = [
        each["step 12, reads on the standby"] / each["step 12, no standby configured"]
        - 1
        for each in counts
    ]
    assert f"{min(extra):,} to {max(extra):,} instructions more per read" in section
    assert f"{min(share):.1%} to {max(share):.1%}" in section
    routed = [row for row in results["under load"] if row["case"].startswith("step 12")]
    on_the_standby = [row["transactions on the standby"] for row in routed]
    on_the_primary = [row["transactions on the primary"] for row in routed]
    assert (
        f"{min(on_the_standby):,} to {max(on_the_standby):,} transactions on the"
        f" standby and {min(on_the_primary)} to {max(on_the_primary)} on the primary"
    ) in section


def test_the_scale_out_tables_are_the_reference_run():
    results = json.loads((ROOT / "bench" / "results" / "scale_out.json").read_text())
    measured = section(PGBOUNCER, "**Scaling out, measured.**", "**Where next.**")

    assert not results["quick"]
    assert table(results["rows"]) in measured
    in_process = [
        {"case": name, **values} for name, values in results["in_process"].items()
    ]
    assert table(in_process) in measured


def test_what_the_pgbouncer_page_reads_in_the_scale_out_run_is_what_it_holds():
    results = json.loads((ROOT / "bench" / "results" / "scale_out.json").read_text())
    said = words(section(PGBOUNCER, "What the rows say:", "**Where next.**"))
    rows = {(row["case"], row["concurrency"]): row for row in results["rows"]}
    levels = sorted({row["concurrency"] for row in results["rows"]})
    step8 = "PgBouncer, QueuePool (step 8)"

    def ratios(case, over):
        return [
            rows[(case, level)]["ok per second"] / rows[(over, level)]["ok per second"]
            for level in levels
        ]

    pooled = ratios(step8, "straight to PostgreSQL")
    assert f"{min(pooled):.1f} to {max(pooled):.1f} times the answers" in said
    nullpool = ratios("PgBouncer, NullPool", step8)
    assert f"{min(nullpool):.2f} to {max(nullpool):.2f} times" in said
    pre_ping = ratios("PgBouncer, QueuePool, pre-ping", step8)
    assert ", ".join(f"{ratio:.2f}" for ratio in pre_ping[:-1]) in said
    assert f"and {pre_ping[-1]:.2f} times as many" in said
    in_process = results["in_process"]
    assert list(in_process)[0] == step8
    for case in ("PgBouncer, NullPool", "PgBouncer, QueuePool, pre-ping"):
        assert f"took {in_process[case]['ratio']:.2f} times as long" in said
    for case in (step8, "PgBouncer, QueuePool, pre-ping"):
        assert all(rows[(case, level)]["errors"] == 0 for level in levels)
    most = max(
        row["most server connections"]
        for row in results["rows"]
        if row["case"] != "straight to PostgreSQL"
    )
    assert f"never more than {most} server connections" in said


def test_step_8s_connection_arithmetic_is_that_of_the_drills_and_the_harness():
    drills = importlib.import_module("tests.test_step08_pgbouncer")
    harness = importlib.import_module("testbed.pgbouncer")
    pool = importlib.import_module("step08_pgbouncer.db").POOL_DEFAULTS
    harness_source = (ROOT / "testbed" / "pgbouncer.py").read_text()
    arithmetic = words(
        section("step08_pgbouncer/README.md", "", "**The settings, and why.**")
    )
    per_worker = pool["pool_size"] + pool["max_overflow"]
    opened = drills.HOSTS * drills.WORKERS * per_worker * 2

    assert (
        f"{drills.HOSTS} hosts × {drills.WORKERS} workers ×"
        f" ({pool['pool_size']} + {pool['max_overflow']}) × 2 databases = {opened},"
        f" + {drills.HOSTS} masters" in arithmetic
    )
    assert f"the same {opened + drills.HOSTS}" in arithmetic
    assert (
        f"{harness.APP_CONNECTIONS_ALLOWED} of {harness.MAX_CONNECTIONS} here"
        in arithmetic
    )
    assert f"{harness.POOL_SIZE} × 2 = {harness.POOL_SIZE * 2}" in arithmetic
    assert "max_client_conn = 1000" in harness_source
    assert "(`max_client_conn`, 1,000 here)" in arithmetic
    wait = re.search(r"query_wait_timeout = (\d+)", harness_source).group(1)
    assert f"`query_wait_timeout` ({wait} s here)" in arithmetic
    drill_table = words(section(PGBOUNCER, "**The drills.**", "**Scaling out"))
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
    assert "`make test` hands the workers two tests at a time" in words(
        page("docs/tests.md")
    )


def test_the_maps_and_reader_questions_figures_are_the_reference_runs():
    results = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    by_backend = {b["backend"]: b["in_process"] for b in results["backends"]}

    def µs(backend, name):
        return by_backend[backend][name]["µs per request"]

    step4 = "step04_pooling"
    over_extension = [
        f"{µs(backend, step4) / µs(backend, 'Flask-SQLAlchemy 3.1'):.3f}×"
        for backend in ("sqlite", "postgresql", "mariadb")
    ]
    assert (
        f"measures {over_extension[0]} Flask-SQLAlchemy 3.1 on SQLite and"
        f" {over_extension[1]} on PostgreSQL ({over_extension[2]} on MariaDB)"
        in words(README)
    )
    dispose = µs("postgresql", "dispose() per request") / µs("postgresql", step4)
    on_mariadb = µs("mariadb", "dispose() per request") / µs("mariadb", step4)
    for path in ("README.md", "docs/reader-questions.md"):
        assert f"{dispose:.1f} times a pooled request" in words(page(path)), path
    databases = words(page("docs/databases.md"))
    for backend in ("postgresql", "mariadb"):
        assert f"{µs(backend, step4)} µs" in databases, backend
    assert f"{µs('mariadb', 'dispose() per request')} µs" in databases
    times = round(on_mariadb)
    assert f"{times} on MariaDB" in words(README)
    async_teardown = [
        µs(backend, "Flask-SQLAlchemy-Lite")
        - µs(backend, "Flask-SQLAlchemy-Lite, no async teardown")
        for backend in by_backend
    ]
    assert (
        f"its async teardown costs {min(async_teardown) / 1000:.2f} to"
        f" {max(async_teardown) / 1000:.2f} ms a request"
    ) in words(page("docs/comparison.md"))
    assert f"and {times} times on MariaDB" in words(page("docs/reader-questions.md"))


# Each step's Try it, run as a reader runs it: every command of its blocks in
# the order written, in a copy of the repository of the test's own.
# And the AsyncSession example's, beside the steps.
EXAMPLES = ["async_session"]
TRY_SECTIONS = [
    (step, title)
    for step in [*STEPS, *EXAMPLES]
    for title, _ in try_it_sections(page(f"{step}/README.md"))
]
# Commands a Try paragraph names in its prose and no block runs, and why.
NOT_RUN = {
    ("step02_session", "make screenshots"): "tests/test_browser.py takes them",
    ("step04_pooling", "make run"): "named: it does not install gunicorn",
    ("step04_pooling", "make lint"): "installs the test tools: the suite has them",
    ("step07_testing", "make run"): "named: it does not install pytest",
    ("step07_testing", "make lint"): "installs the test tools: the suite has them",
    ("step07_testing", "make test"): "runs this suite",
    ("step08_pgbouncer", ".venv/bin/python -m testbed.pgbouncer COMMAND..."): (
        "a form: step 8's make run is one"
    ),
}


def section_text(step, title):
    """Return a step's Try section of this title."""
    return dict(try_it_sections(page(f"{step}/README.md")))[title]


def test_each_step_has_a_try_it_with_commands_that_run():
    assert {step for step, _ in TRY_SECTIONS} == {*STEPS, *EXAMPLES}
    for step, title in TRY_SECTIONS:
        assert commands(section_text(step, title)), (step, title)


def test_every_command_a_try_it_names_is_in_a_block_that_runs():
    named = {
        (step, command)
        for step, title in TRY_SECTIONS
        for command in inline_commands(section_text(step, title))
    }

    assert named == set(NOT_RUN)


def open_the_page_after_the_pool(reader):
    """Step 1: /pool first, connects 0; then the page, which connects once."""
    assert reader.get("/pool").json()["connects"] == 0
    assert reader.get("/").status_code == 200
    pool = reader.get("/pool").json()
    assert (pool["connects"], pool["checked_out"], pool["checked_in"]) == (1, 0, 1)


def reload_the_page(reader, times=3, readme_port=MAKE_RUN_PORT):
    """Reload the page; return /pool's answer after."""
    for _ in range(times):
        assert reader.get("/", readme_port).status_code == 200
    return reader.get("/pool", readme_port).json()


def reloads_hold_connections(reader):
    """Step 2: reloads leave connections checked out, no request running."""
    pool = reload_the_page(reader)
    assert pool["checked_out"] >= 1
    assert pool["requests_running"] == 0


def serve_on_the_small_pool_of_the_burst_tests(reader):
    """The small pool of the browser's burst tests is the README's."""
    assert engine_options(reader.command) == SMALL_POOL_FAILING_FAST
    options = reader.get("/pool").json()["options"]
    assert SMALL_POOL_FAILING_FAST.items() <= options.items()


def the_small_pool_runs_dry(reader):
    """Step 2 on two connections: a reload soon answers 503, with a banner."""
    serve_on_the_small_pool_of_the_burst_tests(reader)
    for _ in range(10):
        response = reader.get("/")
        if response.status_code == 503:
            break
    assert response.status_code == 503
    assert "QueuePool limit of size 2 overflow 0 reached" in response.text
    assert 'id="database-error"' in response.text


def reloads_give_every_connection_back(reader):
    """Step 3: after each request nothing is checked out; one connect."""
    pool = reload_the_page(reader)
    assert (pool["checked_out"], pool["connects"]) == (0, 1)


def the_small_pool_serves_every_reload(reader):
    """From step 3 on, two connections serve reload after reload."""
    serve_on_the_small_pool_of_the_burst_tests(reader)
    pool = reload_the_page(reader, times=10)
    assert pool["checked_out"] == 0


def the_page_shows_step_4s_settings(reader):
    """Step 4's settings in force, read from the pool."""
    defaults = importlib.import_module("step04_pooling.db").POOL_DEFAULTS
    options = reader.get("/pool").json()["options"]
    assert {key: options[key] for key in defaults} == defaults


def the_page_shows_the_override(reader):
    """Step 4 under FLASK_ENGINE_OPTIONS: the override, over the defaults."""
    defaults = importlib.import_module("step04_pooling.db").POOL_DEFAULTS
    options = reader.get("/pool").json()["options"]
    overridden = {**defaults, **engine_options(reader.command)}
    assert {key: options[key] for key in defaults} == overridden
    assert (options["pool_pre_ping"], options["pool_size"]) == (False, 2)


def workers_on_8000(reader, served):
    """Return the answers of /pool of two workers serving on 8000, by pid."""
    server = types.SimpleNamespace(
        url=reader.url(8000), process=reader.serving[8000].process
    )
    reload_the_page(reader, readme_port=8000)
    workers = worker_answers(server, served=served)
    assert len(workers) == 2, (reader.command.text, workers)
    return workers


def workers_serve_on_the_masters_connection(reader):
    """Step 3 under a preloading server: connects 1, connects here 0."""
    for worker in workers_on_8000(reader, served=False).values():
        assert (worker["connects"], worker["connects_in_this_process"]) == (1, 0)


def workers_serve_on_connections_of_their_own(reader):
    """Step 4 under a preloading server: connects 2, connects here 1."""
    for worker in workers_on_8000(reader, served=True).values():
        assert (worker["connects"], worker["connects_in_this_process"]) == (2, 1)


def a_few_requests(reader):
    """Reload the page a few times."""
    reload_the_page(reader, readme_port=8000)


def one_server_process(reader):
    """Step 3's workers on PostgreSQL: one server process, the master's."""
    said = "Step 3 shows one server process, the master's, serving both workers"
    assert said in words(section_text("step04_pooling", "Try the fork"))
    assert "(1 row)" in reader.output, reader.output


def before_init_db_a_503_names_it(reader):
    """Step 5 before init-db: the API answers 503 and names init-db."""
    response = reader.get("/messages")
    assert response.status_code == 503
    assert "flask --app step05_reflection init-db" in response.json()["error"]


def after_init_db_serves(reader):
    """Step 5 after init-db: the same server serves the page."""
    assert reader.get("/").status_code == 200


def the_page_lists_the_new_column(reader):
    """Step 5 restarted: the page lists the column added from outside."""
    assert "<code>author</code>" in reader.get("/").text


def the_new_message_has_an_author(reader):
    """Step 5: the message added shows the column's default."""
    said = '"author":"anonymous"'
    assert said in section_text("step05_reflection", "Try it")
    assert said in reader.output, reader.output


def each_pool_connects_once_and_a_write_returns_both(reader):
    """Step 6: two pools, one connect each from startup; a message added on
    the page leaves neither checked out."""
    pool = reader.get("/pool").json()
    assert (pool["connects"], pool["audit"]["connects"]) == (1, 1)
    created = reader.post("/messages", json={"text": "added on the page"})
    assert created.status_code == 201
    pool = reader.get("/pool").json()
    assert (pool["checked_out"], pool["audit"]["checked_out"]) == (0, 0)


def the_audit_log_lists_the_write(reader):
    """Step 6's GET /audit: the write."""
    entries = json.loads(reader.output)
    assert [entry["text"] for entry in entries] == ["added on the page"]


def the_file_holds_the_write(reader):
    """Step 6: each database's file holds its row of the write."""
    assert "added on the page" in reader.output, reader.output


def the_example_tests_pass(reader):
    """Step 7's example tests: all pass."""
    assert re.search(r"\b\d+ passed\b", reader.output), reader.output
    assert "failed" not in reader.output


def the_app_runs_behind_pgbouncer(reader):
    """Step 8: BEHIND_POOLER on, on PgBouncer's port, in front of a small
    PostgreSQL."""
    assert "This app runs with <code>BEHIND_POOLER</code> on." in reader.get("/").text
    url = reader.get("/pool").json()["url"]
    assert make_url(url).port == reader.printed_port
    assert "(max_connections=20)" in reader.log()


def show_pools_lists_both_databases(reader):
    """Step 8: PgBouncer's pools, one for each of the app's databases."""
    pools = [line.split("|")[0].strip() for line in reader.output.splitlines()]
    assert {"messages", "audit"} <= set(pools), reader.output


def async_requests_give_their_connections_back(reader):
    """Step 9: after async reads, /pool says nothing is checked out."""
    said = '`"checked_out":0`: each async request gave its connection back'
    assert said in words(section_text("step09_app_context", "Try it"))
    assert '"checked_out":0' in reader.output, reader.output


def the_async_session_is_closed_and_its_connection_back(reader):
    """The AsyncSession example: after a write and a read, nothing is
    checked out and no AsyncSession is open; the read listed the write."""
    said = '`"checked_out": 0` and `"sessions_open": 0`'
    assert said in words(section_text("async_session", "Try it"))
    pool = json.loads(reader.output)
    assert (pool["checked_out"], pool["sessions_open"]) == (0, 0), pool
    assert [message["text"] for message in reader.get("/messages").json()] == ["hi"]


def async_reads_on_the_small_pool_give_all_back(reader):
    """Step 9 on two connections: async reads, and nothing checked out."""
    serve_on_the_small_pool_of_the_burst_tests(reader)
    for _ in range(10):
        assert reader.get("/messages").status_code == 200
    assert reader.get("/pool").json()["checked_out"] == 0


def the_headers_count_45_and_link_pages_1_3_and_5(reader):
    """Step 10: page 2 of 10 a page."""
    said = "The headers say 45 messages and link pages 1, 3 and 5"
    assert said in words(section_text("step10_helpers", "Try it"))
    assert "X-Total-Count: 45" in reader.output, reader.output
    [link] = re.findall(r"^Link: (.*)$", reader.output, re.M)
    assert sorted(set(map(int, re.findall(r"[?&]page=(\d+)", link)))) == [1, 3, 5]


def a_bad_page_answers_404_saying_why(reader):
    """Step 10: ?page=x, a JSON 404 that says why; the page's links work."""
    assert json.loads(reader.output) == {
        "error": "page must be a whole number, not 'x'"
    }
    assert reader.get("/messages?page=x").status_code == 404
    links = re.findall(r'href="(/\?page=\d+)"', reader.get("/").text)
    assert links
    for link in links:
        assert reader.get(link).status_code == 200


def the_shell_reads_the_first_message(reader):
    """Step 10's flask shell: the session and the models, no import needed
    but select's, and the first message's text, as the README answers."""
    assert reader.command.answers == ("'message 1'",)


def each_database_is_at_the_head(reader):
    """Step 11: flask db current, one line per database, each after the
    line that names it; on SQLite, Alembic assumes the transactional DDL
    that the migration's BEGIN gives it."""
    assert reader.output.count("0002 (head)") == 2, reader.output
    said = '"Will assume transactional DDL"'
    assert said in words(page("step11_migrations/README.md"))
    assert reader.output.count("Will assume transactional DDL.") == 2, reader.output
    assert reader.output.count("On the messages database") == 1, reader.output


def without_its_tables_the_app_answers_a_json_503(reader):
    """Step 11, downgraded to base: the running app names the missing table."""
    said = '("no such table: messages")'
    assert said in words(section_text("step11_migrations", "Try it"))
    assert "no such table: messages" in json.loads(reader.output)["error"]
    assert reader.get("/messages").status_code == 503


def upgraded_again_it_answers_without_a_restart(reader):
    """Step 11: upgraded, the same running app answers the empty list."""
    assert json.loads(reader.output) == []


def check_finds_nothing_to_do(reader):
    """Step 11: flask db check at the head."""
    assert "No new upgrade operations detected." in reader.output


def the_write_sets_the_wal_position_cookie(reader):
    """Step 12: curl's jar holds the cookie the write's answer set."""
    assert "wal_position" in reader.output


def the_standby_has_your_last_write(reader):
    """Step 12: a second after the write, the page reads on the standby."""
    said = '"it has your last write"'
    assert said in words(section_text("step12_replicas", "Try it"))
    assert reader.output.strip() == (
        "reads went to the <strong>standby</strong>: it has your last write"
    )


def then_no_write_of_yours(reader):
    """Step 12: the cookie deleted, the next page reads on the standby."""
    assert reader.output.strip() == (
        "reads went to the <strong>standby</strong>: no write of yours"
    )


# What each Try section says a reader sees, in the order written: each
# checked after the next command that begins so, whose result it shows.
PROMISES = {
    ("step01_engine", "Try it"): [("make run", open_the_page_after_the_pool)],
    ("step02_session", "Try it"): [
        ("make run", reloads_hold_connections),
        ("FLASK_ENGINE_OPTIONS", the_small_pool_runs_dry),
    ],
    ("step03_teardown", "Try it"): [
        ("make run", reloads_give_every_connection_back),
        ("FLASK_ENGINE_OPTIONS", the_small_pool_serves_every_reload),
    ],
    ("step04_pooling", "Try it"): [
        ("make run", the_page_shows_step_4s_settings),
        ("FLASK_ENGINE_OPTIONS", the_page_shows_the_override),
    ],
    ("step04_pooling", "Try the fork"): [
        (".venv/bin/gunicorn", workers_serve_on_the_masters_connection),
        (".venv/bin/gunicorn", workers_serve_on_connections_of_their_own),
        (".venv/bin/python -m testbed.postgres", a_few_requests),
        ("psql", one_server_process),
        (".venv/bin/uwsgi", workers_serve_on_connections_of_their_own),
        (".venv/bin/uwsgi", workers_serve_on_the_masters_connection),
    ],
    ("step05_reflection", "Try it"): [
        (".venv/bin/flask --app step05_reflection run", before_init_db_a_503_names_it),
        (".venv/bin/flask --app step05_reflection init-db", after_init_db_serves),
        (".venv/bin/flask --app step05_reflection run", the_page_lists_the_new_column),
        ("curl", the_new_message_has_an_author),
    ],
    ("step06_multiple_databases", "Try it"): [
        ("make run", each_pool_connects_once_and_a_write_returns_both),
        ("curl", the_audit_log_lists_the_write),
        ("sqlite3", the_file_holds_the_write),
        ("sqlite3", the_file_holds_the_write),
    ],
    ("step07_testing", "Try it"): [(".venv/bin/pytest", the_example_tests_pass)],
    ("step08_pgbouncer", "Try it"): [
        ("make run", the_app_runs_behind_pgbouncer),
        ("psql", show_pools_lists_both_databases),
    ],
    ("step09_app_context", "Try it"): [
        ("curl -s localhost:5000/pool", async_requests_give_their_connections_back),
        ("FLASK_ENGINE_OPTIONS", async_reads_on_the_small_pool_give_all_back),
    ],
    ("async_session", "Try it"): [
        (
            "curl -s localhost:5000/pool",
            the_async_session_is_closed_and_its_connection_back,
        )
    ],
    ("step10_helpers", "Try it"): [
        ("curl -si", the_headers_count_45_and_link_pages_1_3_and_5),
        ("curl -s 'localhost:5000/messages?page=x'", a_bad_page_answers_404_saying_why),
        (
            ".venv/bin/flask --app step10_helpers shell",
            the_shell_reads_the_first_message,
        ),
    ],
    ("step11_migrations", "Try it"): [
        (
            ".venv/bin/flask --app step11_migrations db current",
            each_database_is_at_the_head,
        ),
        (
            "curl -s localhost:5000/messages",
            without_its_tables_the_app_answers_a_json_503,
        ),
        (
            "curl -s localhost:5000/messages",
            upgraded_again_it_answers_without_a_restart,
        ),
        (".venv/bin/flask --app step11_migrations db check", check_finds_nothing_to_do),
    ],
    ("step12_replicas", "Try it"): [
        ("grep wal_position jar", the_write_sets_the_wal_position_cookie),
        ("curl -s -c jar -b jar localhost:5000/ |", the_standby_has_your_last_write),
        ("curl -s -c jar -b jar localhost:5000/ |", then_no_write_of_yours),
    ],
}


def promised_after(commands_typed, promises):
    """Pair each command with the promise checked after it, if any."""
    left = list(promises)
    paired = []
    for command in commands_typed:
        if left and command.text.startswith(left[0][0]):
            paired.append((command, left.pop(0)[1]))
        else:
            paired.append((command, None))
    assert left == [], f"no command for {left}"
    return paired


def test_each_promise_follows_a_command_of_its_try_section():
    assert set(PROMISES) == set(TRY_SECTIONS)
    for (step, title), promises in PROMISES.items():
        promised_after(commands(section_text(step, title)), promises)


def the_servers_are_gone(log):
    """Step 8: stopped, make run deletes the PostgreSQL and PgBouncer it
    started."""
    folders = re.findall(r"(?:A throwaway PostgreSQL|PgBouncer) in (/\S+?)[,\s]", log)
    assert len(folders) == 2, log
    deadline = time.monotonic() + 30
    while any(map(os.path.exists, folders)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(os.path.exists, folders))


# The programs a Try it calls besides the repository's, and their packages.
PROGRAMS = {"curl": "curl", "psql": "postgresql-client", "sqlite3": "sqlite3"}


def skip_without_what_it_calls(written):
    """Skip (fail in CI) a Try it whose servers or programs are missing."""
    text = "\n".join(command.text for command in written)
    if re.search(r"DB=pgbouncer|testbed\.postgres", text) and find_postgres() is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    if "DB=pgbouncer" in text and find_pgbouncer() is None:
        skip_or_fail(HOW_TO_GET_PGBOUNCER)
    for program, package in PROGRAMS.items():
        calls = re.search(rf"(?:^|[;|&]\s*|do ){program} ", text, re.M)
        if calls and shutil.which(program) is None:
            skip_or_fail(f"needs {program}: apt-get install {package}")


def test_the_map_and_ci_install_the_programs_the_try_its_call():
    installed = re.search(r"^apt-get install (.*)$", README, re.M).group(1).split()
    ci = (ROOT / ".ci" / "run").read_text()
    for program, package in PROGRAMS.items():
        assert f"command -v {program} " in ci
        assert f"packages+=({package})" in ci
        # Debian's postgresql brings its client, psql.
        brought = {"psql": "postgresql"}.get(program)
        assert package in installed or brought in installed, program


@pytest.mark.slow
@pytest.mark.parametrize(
    ("step", "title"), TRY_SECTIONS, ids=[f"{s}-{t}" for s, t in TRY_SECTIONS]
)
def test_each_try_it_runs_as_written_and_shows_what_it_says(step, title, tmp_path):
    written = commands(section_text(step, title))
    skip_without_what_it_calls(written)
    typed = promised_after(written, PROMISES[(step, title)])
    folder = copy_of_the_repository(tmp_path / "reader")

    with Reader(folder, tmp_path) as reader:
        for command, promise in typed:
            reader.type(command)
            if promise is not None:
                promise(reader)
        logs = [background.log() for background in reader.terminals.running]
        reader.stop_all()

    if step == "step08_pgbouncer":
        the_servers_are_gone(logs[0])


def test_the_async_view_costs_cited_are_the_reference_runs():
    results = json.loads((ROOT / "bench" / "results" / "async_views.json").read_text())
    assert not results["quick"]
    by_backend = {backend["backend"]: backend for backend in results["backends"]}
    gevent_page = words(page("docs/gevent.md"))
    readme = words(page("step09_app_context/README.md"))

    def ratio(backend, way, case):
        return f"{by_backend[backend]['async views'][way][case]['ratio']:g}×"

    def µs(backend, case):
        return by_backend[backend]["async views"]["threads"][case]["µs per request"]

    own, default = bench_async_views.ASYNC_VIEWS, bench_async_views.DEFAULT
    with_threads = (
        f"costs {ratio('sqlite', 'threads', own)} the sync view's on SQLite and"
        f" {ratio('postgresql', 'threads', own)} on PostgreSQL run by"
        f" `async_views.py`, and {ratio('sqlite', 'threads', default)} and"
        f" {ratio('postgresql', 'threads', default)} run by Flask's default"
    )
    under_gevent = (
        f"patched, {ratio('sqlite', 'gevent', own)} and"
        f" {ratio('postgresql', 'gevent', own)} against"
        f" {ratio('sqlite', 'gevent', default)} and"
        f" {ratio('postgresql', 'gevent', default)}."
    )
    assert with_threads in gevent_page
    assert under_gevent in gevent_page
    sync = bench_async_views.SYNC
    loop = [µs(backend, own) - µs(backend, sync) for backend in by_backend]
    thread = [µs(backend, default) - µs(backend, own) for backend in by_backend]
    assert f"adds {loop[0]} µs on SQLite and {loop[1]} µs on PostgreSQL" in (
        gevent_page
    )
    assert f"another {thread[0]} µs and {thread[1]} µs" in gevent_page
    lite = [
        ratio("postgresql", "threads", case)
        for case in (bench_async_views.LITE_DEFAULT, bench_async_views.LITE_ASYNC_VIEWS)
    ]
    assert f"costs {lite[0]} the sync view's on PostgreSQL with Flask's default," in (
        gevent_page
    )
    assert f"{lite[1]} on `async_views.py`'s Flask" in gevent_page
    assert (
        f"{ratio('postgresql', 'threads', own)} a sync view's read on PostgreSQL"
        f" with `async_views.py`, {ratio('postgresql', 'threads', default)} with"
        " Flask's default"
    ) in readme
    # The goal: the steps' way no dearer than Flask's default, everywhere.
    assert {row["met"] for row in bench_async_views.goals(results)} == {"yes"}


def test_the_async_session_costs_are_the_reference_runs():
    results = json.loads((ROOT / "bench" / "results" / "async_views.json").read_text())
    [postgresql] = [b for b in results["backends"] if b["backend"] == "postgresql"]
    timed = postgresql["AsyncSession"]
    text = page("docs/async.md")
    verdict = words(section("docs/async.md", None, "## Why"))

    for case in bench_async_views.ASYNC_SESSION_CASES:
        threads, gevent = timed["threads"][case], timed["gevent"][case]
        row = (
            f"| {case} | {threads['µs per request']} | {threads['ratio']:g}"
            f" | {gevent['µs per request']} | {gevent['ratio']:g}"
            f" | {threads['connects per request']:g} |"
        )
        assert row in text, case

    def ratio(case):
        return f"{timed['threads'][case]['ratio']:g}×"

    assert f"It costs {ratio('AsyncSession, one-loop')} step 9's sync Session" in (
        verdict
    )
    assert f"is cheaper, {ratio('AsyncSession, loop-per-thread')}," in verdict
    assert f"costs {ratio('AsyncSession, nullpool')}." in verdict
    lite = ratio("Flask-SQLAlchemy-Lite, async session")
    assert f"It costs {lite} step 9's sync Session per read on psycopg" in verdict
    views = postgresql["async views"]["threads"]
    step9 = f"{views[bench_async_views.ASYNC_VIEWS]['ratio']:g}×"
    assert f"keep step 9's sync Session in them: {step9} a sync view's read" in (
        verdict
    )
