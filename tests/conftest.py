"""Fixtures: a step's app on a fresh database, its clients, and live servers."""

import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from .postgres import HOW_TO_GET_POSTGRES
from .postgres import Cluster
from .postgres import Server
from .postgres import find_binaries
from .support import ROOT
from .support import STEPS
from .support import import_step


@pytest.fixture(params=STEPS)
def step(request):
    """Name each step package in turn."""
    return request.param


def skip_or_fail(reason):
    """Skip the test, or fail it in CI, where every test must run."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres():
    """Return the PostgreSQL server of the run, started on first use."""
    if url := os.environ.get("TEST_POSTGRES_URL"):
        yield Server(url)
        return
    bindir = find_binaries()
    if bindir is None:
        yield None
        return
    cluster = Cluster(bindir, free_port())
    yield cluster
    cluster.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    """Name each database the tests run on."""
    return request.param


@pytest.fixture
def database_url(backend, tmp_path, request):
    """Return the URL of an empty database of the test's own."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite'}"
        return
    server = request.getfixturevalue("postgres")
    if server is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    url = server.create_database()
    yield url
    server.drop_database(url)


def pytest_sessionfinish(session, exitstatus):
    """In CI, fail a run in which any test was skipped."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") and skipped and exitstatus == pytest.ExitCode.OK:
        reporter.write_line(f"CI: {len(skipped)} tests skipped; every test must run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def make_app(database_url):
    """Return a factory of step apps on the test's database, tables created."""
    apps = []

    def make(step, engine_options=None, **config):
        module = import_step(step)
        # init-db runs through the CLI of an app of its own, so that the app
        # under test starts with an untouched pool.
        initializer = module.create_app({"DATABASE_URL": database_url})
        result = initializer.test_cli_runner().invoke(args=["init-db"])
        assert result.output == "Initialized the database.\n", result.output
        initializer.extensions["engine"].dispose()

        app = module.create_app(
            {
                "TESTING": True,
                "DATABASE_URL": database_url,
                "ENGINE_OPTIONS": engine_options or {},
                **config,
            }
        )
        apps.append(app)
        return app

    yield make

    for app in apps:
        # Clean up what a step without teardown leaves in this thread.
        if "session" in app.extensions:
            with app.app_context():
                app.extensions["session"].remove()
        app.extensions["engine"].dispose()


@pytest.fixture
def app(step, make_app):
    """Return the step's app with default settings."""
    return make_app(step)


@pytest.fixture
def client(app):
    """Return a test client that runs requests in the test's own thread."""
    return app.test_client()


class LiveServer:
    """A step served by a real ``flask run`` on a free loopback port."""

    def __init__(self, step, database_url, env, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        flask = [sys.executable, "-m", "flask", "--app", step]
        subprocess.run(
            [*flask, "init-db"], cwd=ROOT, env=self.env, check=True, timeout=60
        )
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*flask, "run", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_serving()

    def _wait_until_serving(self, seconds=30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"flask run exited:\n{self.log()}")
            try:
                requests.get(self.url + "/pool", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"flask run did not answer in {seconds}s:\n{self.log()}")

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
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port():
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def serve(database_url, tmp_path):
    """Return a function that starts a step under ``flask run``."""
    servers = []

    def start(step, **env):
        server = LiveServer(
            step, database_url, env, tmp_path / f"server-{len(servers)}.log"
        )
        servers.append(server)
        return server

    yield start

    for server in servers:
        server.stop()
