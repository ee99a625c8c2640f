"""The Makefile's commands, run as a reader runs them."""

import os
import re
import signal
import subprocess
import time

import pytest
import requests

from .conftest import skip_or_fail
from .postgres import HOW_TO_GET_POSTGRES
from .postgres import find_binaries
from .support import ROOT
from .support import free_port


# Ctrl-C in a terminal sends SIGINT to the whole foreground group; kill and
# closing the terminal, SIGTERM.
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_make_run_db_postgresql_serves_the_step_on_a_throwaway_server(
    tmp_path, stop_signal
):
    if find_binaries() is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    port = free_port()
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        make = subprocess.Popen(
            [
                *("make", "run", "DB=postgresql"),
                *("STEP=step06_multiple_databases", f"PORT={port}"),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            # make, the cluster's keeper and flask in a group of their own.
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert make.poll() is None, log_path.read_text()
            try:
                pool = requests.get(url + "/pool", timeout=1).json()
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        created = requests.post(url + "/messages", json={"text": "on PostgreSQL"})
        listed = requests.get(url + "/messages", timeout=10).json()
    finally:
        os.killpg(make.pid, stop_signal)
        make.wait(timeout=60)

    assert pool["url"].startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert pool["url"].endswith("/messages")
    # Step 6's audit database is a second database on the same server.
    assert pool["audit"]["url"] == pool["url"].removesuffix("messages") + "audit"
    assert created.status_code == 201
    assert [message["text"] for message in listed] == ["on PostgreSQL"]
    # The cluster is gone with the command that used it.
    folder = re.search(r"A throwaway PostgreSQL in (\S+),", log_path.read_text())
    assert folder is not None, log_path.read_text()
    deadline = time.monotonic() + 30
    while os.path.exists(folder.group(1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(folder.group(1))
