"""Servers that preload tests/preloaded_app.py, and their environment."""

import os
import signal
import subprocess
import sys

from testbed import ROOT
from testbed.loopback import free_port
from testbed.stopping import stop_process

# uWSGI as readers start it: a master that loads the app, 3 processes of
# 4 threads, and nothing else changed.
UWSGI_PROCESSES = 3
UWSGI_THREADS = 4


def preloaded_environment(databases, pid_file, step="step04_pooling"):
    """Return the environment of a server that preloads tests/preloaded_app.py:
    the step, its databases, and where the master's server pid goes."""
    return {
        **os.environ,
        **databases,
        "PRELOAD_STEP": step,
        "PRELOAD_BACKEND_PID_FILE": str(pid_file),
    }


def serve_under_uwsgi(
    step, databases, pid_file, module="tests.preloaded_app:app", threads=True
):
    """Start uWSGI with its defaults on the preloaded step (or on another
    ``module``; one process without threads if not ``threads``); return it
    and its URL."""
    port = free_port()
    workers = (
        ("--processes", str(UWSGI_PROCESSES), "--threads", str(UWSGI_THREADS))
        if threads
        else ("--processes", "1")
    )
    uwsgi = subprocess.Popen(
        [
            # pyuwsgi's program, in the same environment as this Python.
            *(os.path.join(os.path.dirname(sys.executable), "uwsgi"), "--master"),
            *workers,
            *("--http-socket", f"127.0.0.1:{port}", "--disable-logging"),
            *("--module", module),
        ],
        cwd=ROOT,
        env=preloaded_environment(databases, pid_file, step),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return uwsgi, f"http://127.0.0.1:{port}"


def stop_uwsgi(uwsgi, seconds=30):
    """Stop uWSGI: SIGINT ends the master and its workers (SIGTERM reloads);
    kill it after ``seconds``. Return how it ended: its return code."""
    stop_process(uwsgi, signal.SIGINT, seconds)
    return uwsgi.returncode
