"""Flask-SQLAlchemy's own tests, run against step 10.

The release's sdist comes from the package index as the test runs, never
from this repository. Its tests run unchanged, with their own fixtures and
pytest settings, in a pytest of their own; tests/flask_sqlalchemy_shim/
stands in for the extension, first on the path, and its plan
(step10_plan.py) says which tests apply and which fail by design.
"""

import hashlib
import os
import re
import subprocess
import sys
import tarfile
from xml.etree import ElementTree

import pytest

from testbed import ROOT

from .flask_sqlalchemy_shim import step10_plan as plan

SHIM = ROOT / "tests" / "flask_sqlalchemy_shim"
SDIST = f"flask_sqlalchemy-{plan.RELEASE}"


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def sdist(request, tmp_path_factory):
    """Return the release's sdist, downloaded from the package index once:
    into pytest's cache, which keeps it for the next runs, if it is on."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir(SDIST) if cache else tmp_path_factory.mktemp(SDIST)
    path = folder / f"{SDIST}.tar.gz"
    if not path.is_file() or sha256(path) != plan.SDIST_SHA256:
        path.unlink(missing_ok=True)
        download = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps"),
                *("--no-binary", ":all:", f"flask-sqlalchemy=={plan.RELEASE}"),
                *("--dest", folder),
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert download.returncode == 0, download.stdout + download.stderr
    assert sha256(path) == plan.SDIST_SHA256
    return path


@pytest.fixture
def extension_tests(sdist, tmp_path):
    """Return the release's folder with its tests/ and its pytest settings
    (pyproject.toml) extracted, and not its code."""
    with tarfile.open(sdist) as archive:
        wanted = [
            member
            for member in archive.getmembers()
            if member.name == f"{SDIST}/pyproject.toml"
            or member.name.startswith(f"{SDIST}/tests/")
        ]
        archive.extractall(tmp_path, members=wanted, filter="data")
    return tmp_path / SDIST


def outcomes(junit_xml):
    """Return each test's outcome and message from a JUnit XML report,
    by its file and name (``test_cli.py::test_shell_context[db1]``)."""
    found = {}
    for case in ElementTree.parse(junit_xml).iter("testcase"):
        test = f"{case.get('classname').rpartition('.')[2]}.py::{case.get('name')}"
        result = next(iter(case), None)
        if result is None:
            found[test] = ("passed", None)
        elif result.get("type") == "pytest.xfail":
            found[test] = ("xfailed", result.get("message"))
        else:
            found[test] = (result.tag, result.get("message"))
    return found


def counts(summary):
    """Return the counts of pytest's last line: {"passed": 3, ...}."""
    return {
        outcome: int(number)
        for number, outcome in re.findall(r"(\d+) (\w+)", summary.split(" in ")[0])
    }


@pytest.mark.slow
def test_the_extensions_own_tests_pass_on_step_10_but_for_its_differences_by_design(
    extension_tests, tmp_path
):
    report = tmp_path / "report.xml"
    environment = {
        **os.environ,
        # The shim first, so that their "import flask_sqlalchemy" finds it.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(SHIM), os.environ.get("PYTHONPATH")])
        ),
        # Pytest and the plan only, as the release's own tox runs them:
        # none of this suite's plugins (xdist, timeout, hypothesis...).
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }

    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "tests"),
            *("-p", "step10_plan", "-p", "no:cacheprovider"),
            f"--basetemp={tmp_path / 'basetemp'}",
            f"--junitxml={report}",
        ],
        cwd=extension_tests,
        env=environment,
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    # Their settings (warnings are errors), and the shim, not the extension.
    assert "configfile: pyproject.toml" in run.stdout
    assert f"flask_sqlalchemy: {SHIM / 'flask_sqlalchemy' / '__init__.py'}" in (
        run.stdout
    )
    # Every test that applies passed, but those that fail by design, which
    # failed with the error and for the reason the plan gives.
    by_test = outcomes(report)
    by_design = {
        test: ("xfailed", plan.EXPECTED_FAILURES[planned][1])
        for test in by_test
        if (planned := test.partition("[")[0]) in plan.EXPECTED_FAILURES
    }
    assert by_design
    assert {
        test: outcome for test, outcome in by_test.items() if outcome[0] != "passed"
    } == by_design
    assert counts(run.stdout.splitlines()[-1]) == plan.OUTCOMES
