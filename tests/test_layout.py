"""Each step is its concept: what carries no concept is the same in every step.

A step package holds two kinds of files. The shared ones (the page's
layout, the pool panel, the blueprint with the API's validation and errors,
the WSGI entry point) are byte-identical in every step. The concept files are
what the step changes: its database code, its models, the routes that use
them, and the template that holds its title, concept and next step.
"""

import ast
import difflib

import pytest

from testbed import ROOT

from .steps import RUNS_AS_THE_STEP_BEFORE
from .steps import SERVES_AS_THE_STEP_BEFORE
from .steps import STEPS

SHARED_FILES = [
    "web.py",
    "monitor.py",
    "wsgi.py",
    "templates/layout.html",
    "static/panel.js",
    "static/page.css",
]

# What a step changes, and where. __init__.py holds the step's docstring and
# the configuration keys it adds; README.md is the step's page for readers.
CONCEPT_FILES = [
    "README.md",
    "__init__.py",
    "db.py",
    "models.py",
    "views.py",
    "templates/index.html",
]
# Step 9 adds async_views.py: how its async views run, under gevent too;
# step 11 adds migrate.py, the flask db commands, and its migrations folder;
# step 12 adds replicas.py, the routing Session and read-your-writes.
CONCEPT_FILES_FROM = {
    "testing.py": "step07_testing",
    "async_views.py": "step09_app_context",
    "helpers.py": "step10_helpers",
    "migrate.py": "step11_migrations",
    "replicas.py": "step12_replicas",
}
CONCEPT_FOLDERS = ["schema", "example_tests", "migrations"]

# The files whose changes the neighbours' diff leaves out: the concept's
# own code, which may take any number of lines, and its README, which the
# diff a step's README suggests leaves out too.
UNCOUNTED = {
    "README.md",
    "db.py",
    "models.py",
    "testing.py",
    "async_views.py",
    "helpers.py",
    "migrate.py",
    "replicas.py",
}
UNCOUNTED_FOLDERS = {"schema", "example_tests", "migrations"}

# Most steps change a handler or two and the page's text; a step that moves
# the handlers to another API (step 2: Core to the ORM; step 6: a second
# database; step 10: the helpers) changes more of them.
MOST_CHANGED_LINES = 40
MOST_CHANGED_LINES_WHEN_THE_HANDLERS_CHANGE = 80
STEPS_THAT_CHANGE_THE_HANDLERS = {
    "step02_session",
    "step06_multiple_databases",
    "step10_helpers",
}


def files_of(step):
    """Return the step's files, as paths relative to its package."""
    package = ROOT / step
    return sorted(
        path.relative_to(package).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def changed_lines(before, after):
    """Count the lines ``diff -ruN before after`` marks with + or -, outside
    the concept's own code."""
    names = set(files_of(before)) | set(files_of(after))
    counted = 0
    for name in sorted(names):
        if name.rpartition("/")[2] in UNCOUNTED or name.split("/")[0] in (
            UNCOUNTED_FOLDERS
        ):
            continue
        old, new = (ROOT / before / name, ROOT / after / name)
        diff = difflib.unified_diff(
            old.read_text().splitlines() if old.is_file() else [],
            new.read_text().splitlines() if new.is_file() else [],
            lineterm="",
        )
        counted += sum(
            1
            for line in diff
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        )
    return counted


@pytest.mark.parametrize(("step", "before"), RUNS_AS_THE_STEP_BEFORE.items())
def test_a_step_the_server_tests_leave_out_runs_the_app_of_the_step_before(
    step, before
):
    for name in ("db.py", "models.py", "views.py"):
        assert (ROOT / step / name).read_bytes() == (ROOT / before / name).read_bytes()


# What serves a request: the routes, the helpers, how async views run, and
# in db.py the pools' settings, the Session's scope and teardown, and the
# pool's owner after a fork.
SERVING_FILES = ["views.py", "helpers.py", "async_views.py", "testing.py"]
SERVING_DEFINITIONS = [
    "POOL_DEFAULTS",
    "engine_options",
    "BEHIND_POOLER_DEFAULTS",
    "create_engine_for",
    "current_app_context",
    "get_session",
    "PoolOwner",
    "remove_session",
]


def definitions(path):
    """Return the source of each top-level function, class and constant."""
    source = path.read_text()
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            found[node.name] = ast.get_source_segment(source, node)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = ast.get_source_segment(source, node)
    return found


@pytest.mark.parametrize(
    ("step", "before"),
    [
        (step, before)
        for step, before in SERVES_AS_THE_STEP_BEFORE.items()
        if step not in RUNS_AS_THE_STEP_BEFORE
    ],
)
def test_a_step_the_server_tests_leave_out_serves_as_the_step_before(step, before):
    for name in SERVING_FILES:
        assert (ROOT / step / name).read_bytes() == (ROOT / before / name).read_bytes()
    ours, theirs = (
        definitions(ROOT / step / "db.py"),
        definitions(ROOT / before / "db.py"),
    )
    for name in SERVING_DEFINITIONS:
        assert ours[name] == theirs[name], name


@pytest.mark.parametrize("name", SHARED_FILES)
def test_each_shared_file_is_byte_identical_in_every_step(name):
    first = (ROOT / STEPS[0] / name).read_bytes()

    drifted = [step for step in STEPS if (ROOT / step / name).read_bytes() != first]

    assert drifted == [], f"{name} differs from {STEPS[0]}'s"


@pytest.mark.parametrize("step", STEPS)
def test_every_file_of_a_step_is_shared_or_its_concept(step):
    concept = set(CONCEPT_FILES) | {
        name for name, first in CONCEPT_FILES_FROM.items() if step >= first
    }

    unaccounted = [
        name
        for name in files_of(step)
        if name not in SHARED_FILES
        and name not in concept
        and name.split("/")[0] not in CONCEPT_FOLDERS
    ]

    assert unaccounted == []


@pytest.mark.parametrize(
    ("before", "after"),
    list(zip(STEPS, STEPS[1:], strict=False)),
    ids=[f"{before}->{after}" for before, after in zip(STEPS, STEPS[1:], strict=False)],
)
def test_neighbouring_steps_differ_in_little_but_their_concept(before, after):
    most = (
        MOST_CHANGED_LINES_WHEN_THE_HANDLERS_CHANGE
        if after in STEPS_THAT_CHANGE_THE_HANDLERS
        else MOST_CHANGED_LINES
    )

    assert changed_lines(before, after) <= most


# The top-level packages that are not steps: the AsyncSession example,
# beside the steps but not one of them (no number, no diff with a
# neighbour), and the tooling.
NOT_STEPS = {"async_session", "bench", "testbed", "tests"}


def test_every_top_level_package_is_a_step_or_a_named_other():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}

    assert packages == set(STEPS) | NOT_STEPS
    # A step's name is numbered; the example's is not, so no step test,
    # neighbour's diff or shared file check takes it for one.
    assert "async_session" not in STEPS
    assert all(step[:4] == "step" and step[4:6].isdigit() for step in STEPS)
