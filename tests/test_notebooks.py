"""Every step has a notebook, which runs top to bottom and asserts what it shows."""

import ast
import os
import re
import signal
import subprocess
import time

import nbformat
import pytest
import requests
from nbclient import NotebookClient

from testbed import ROOT
from testbed.loopback import free_port
from testbed.pgbouncer import HOW_TO_GET_PGBOUNCER
from testbed.pgbouncer import find_pgbouncer
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.postgres import find_binaries

from .conftest import skip_or_fail
from .steps import STEPS

NOTEBOOKS = ROOT / "notebooks"


def notebook_of(step):
    """Return the path of a step's notebook: step01_engine, 01_engine.ipynb."""
    return NOTEBOOKS / f"{step.removeprefix('step')}.ipynb"


def read(path):
    """Read a notebook."""
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def code_cells(notebook):
    """Return the notebook's code cells."""
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_every_step_has_a_notebook_and_every_notebook_a_step():
    notebooks = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))

    assert notebooks == [notebook_of(step).name for step in STEPS]


def test_notebooks_are_committed_without_outputs(step):
    notebook = read(notebook_of(step))

    for cell in code_cells(notebook):
        assert cell.outputs == []
        assert cell.execution_count is None


def test_every_cell_after_the_setup_ends_with_an_assert(step):
    # The first code cell imports and names the knobs; every later one
    # makes a claim, and its last statement checks it.
    setup, *claims = code_cells(read(notebook_of(step)))

    assert claims
    for cell in claims:
        last_statement = ast.parse(cell.source).body[-1]
        assert isinstance(last_statement, ast.Assert), cell.source


# Each notebook runs on SQLite, the database a reader's notebook uses unless
# DATABASE_URL says otherwise. Step 4's runs on PostgreSQL too, where its
# fork table shows server processes; step 8's starts a PostgreSQL and a
# PgBouncer of its own, step 11's a PostgreSQL and step 12's a primary and a
# standby, whatever DATABASE_URL says: each runs once.
NOTEBOOK_RUNS = [
    (step, backend)
    for step in STEPS
    for backend in {
        "step04_pooling": ["sqlite", "postgresql"],
        "step08_pgbouncer": ["postgresql"],
        "step11_migrations": ["postgresql"],
        "step12_replicas": ["postgresql"],
    }.get(step, ["sqlite"])
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("step", "backend"), NOTEBOOK_RUNS, ids=["-".join(run) for run in NOTEBOOK_RUNS]
)
def test_the_notebook_runs_on_a_fresh_kernel_and_shows_plots_and_tables(
    step, backend, request, monkeypatch
):
    if step in ("step08_pgbouncer", "step11_migrations", "step12_replicas"):
        if find_binaries() is None:
            skip_or_fail(HOW_TO_GET_POSTGRES)
        if step == "step08_pgbouncer" and find_pgbouncer() is None:
            skip_or_fail(HOW_TO_GET_PGBOUNCER)
    else:
        # The notebook works on the databases DATABASE_URL (and, from step 6
        # on, AUDIT_DATABASE_URL) name, as a reader's would; here, the
        # test's own (SQLite or PostgreSQL).
        databases_for = request.getfixturevalue("databases_for")
        for variable, url in databases_for(step).items():
            monkeypatch.setenv(variable, url)
    notebook = read(notebook_of(step))
    client = NotebookClient(
        notebook,
        # No cell of a notebook may take longer than this.
        timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )

    client.execute()

    outputs = [output for cell in code_cells(notebook) for output in cell.outputs]
    shown = {kind for output in outputs for kind in output.get("data", {})}
    assert "image/png" in shown
    assert "text/html" in shown
    # No warning, log line or traceback on the way.
    assert [output.text for output in outputs if output.get("name") == "stderr"] == []


def listening_addresses(port):
    """Return the local addresses that listen on a TCP port, from /proc."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    addresses.add(address)
    return addresses


@pytest.mark.slow
def test_make_notebooks_serves_the_notebooks_on_loopback_only(tmp_path):
    port = free_port()
    log_path = tmp_path / "jupyterlab.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                "make",
                "notebooks",
                f"NOTEBOOK_PORT={port}",
                "NOTEBOOK_ARGS=--no-browser",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            # make and JupyterLab in a group of their own, stopped together.
            start_new_session=True,
        )
    try:
        token = None
        deadline = time.monotonic() + 60
        while token is None and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            token = re.search(r"\?token=(\w+)", log_path.read_text())
            time.sleep(0.2)
        assert token is not None, log_path.read_text()

        contents = requests.get(
            f"http://127.0.0.1:{port}/api/contents",
            params={"token": token.group(1)},
            timeout=10,
        )

        assert contents.status_code == 200
        names = {entry["name"] for entry in contents.json()["content"]}
        assert {notebook_of(step).name for step in STEPS} <= names
        # 127.0.0.1 only, as /proc writes it: 0100007F.
        assert listening_addresses(port) == {"0100007F"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
