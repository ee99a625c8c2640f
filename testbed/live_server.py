"""A step served by a real ``flask run`` on a free loopback port."""

import importlib
import os
import subprocess
import sys

import requests

from . import ROOT
from .loopback import free_port
from .loopback import wait_for_http
from .step_apps import databases_in
from .step_apps import initialize_databases
from .stopping import stop_process


class LiveServer:
    """A step under ``flask run``, its databases initialized unless told not
    to, and what it prints in a log file."""

    def __init__(self, step, env, log_path, init_db=True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        if init_db:
            # Here rather than in a process of its own, which would import
            # Flask and SQLAlchemy once more: a second, or three on a busy
            # machine, for every server a test starts.
            initialize_databases(
                importlib.import_module(step).create_app, databases_in(env)
            )
        flask = [sys.executable, "-m", "flask", "--app", step]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*flask, "run", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_http(self.url, self.process, log_path=log_path)
        except BaseException:
            self.stop()
            raise

    def get(self, path, **kwargs):
        """Send a GET request to the server."""
        return requests.get(self.url + path, **{"timeout": 30, **kwargs})

    def post(self, path, **kwargs):
        """Send a POST request to the server."""
        return requests.post(self.url + path, **{"timeout": 30, **kwargs})

    def log(self):
        """Return what the server has printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self):
        """Stop the server and wait for it to exit."""
        stop_process(self.process, seconds=10)
