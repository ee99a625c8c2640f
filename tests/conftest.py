"""Fixtures: a step's app on a fresh database, its clients, and live servers."""

import os

import pytest
from sqlalchemy.engine import make_url

from testbed import mariadb as mariadb_servers
from testbed.live_server import LiveServer
from testbed.loopback import free_port
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.postgres import Cluster
from testbed.postgres import Server
from testbed.postgres import find_binaries
from testbed.step_apps import close_app
from testbed.step_apps import initialize_databases

from .steps import RUNS_AS_THE_STEP_BEFORE
from .steps import SERVES_AS_THE_STEP_BEFORE
from .steps import STEPS
from .steps import STEPS_WITH_TWO_DATABASES
from .steps import import_step


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
        server = Server(url)
        yield server
        server.close()
        return
    bindir = find_binaries()
    if bindir is None:
        yield None
        return
    cluster = Cluster(bindir, free_port())
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def mariadb():
    """Return the MariaDB server of the run, started on first use."""
    if url := os.environ.get("TEST_MARIADB_URL"):
        server = mariadb_servers.Server(url)
        yield server
        server.close()
        return
    binaries = mariadb_servers.find_binaries()
    if binaries is None:
        yield None
        return
    instance = mariadb_servers.Instance(binaries, free_port())
    yield instance
    instance.destroy()


# The servers of the backends other than SQLite, and what to do without one.
# "mysql-url" is the same MariaDB reached through a mysql+pymysql:// URL, as
# most MySQL and MariaDB users write it: SQLAlchemy then names the dialect
# "mysql", not "mariadb".
SERVERS = {
    "postgresql": ("postgres", HOW_TO_GET_POSTGRES),
    "mariadb": ("mariadb", mariadb_servers.HOW_TO_GET_MARIADB),
    "mysql-url": ("mariadb", mariadb_servers.HOW_TO_GET_MARIADB),
}

# The backends most tests run on. MariaDB is the third, for the tests that
# name it: the shared contract on every step, the concept tests its
# differences could break (reflection, two databases, isolation), and its
# drills (tests/test_mariadb.py, tests/test_faults_postgres.py). The shared
# contract runs on every step through a mysql+pymysql:// URL too.
BACKENDS = ["sqlite", "postgresql"]
ALL_BACKENDS = [*BACKENDS, "mariadb"]
CONTRACT_BACKENDS = [*ALL_BACKENDS, "mysql-url"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Name each database the tests run on."""
    return request.param


class Databases:
    """Empty databases on one backend, created on demand and dropped after."""

    def __init__(self, backend, folder, request):
        self.backend = backend
        self.folder = folder
        self.request = request
        self.created = []

    def create(self, name):
        """Return the URL of a new, empty database."""
        if self.backend == "sqlite":
            return f"sqlite:///{self.folder / f'{name}.sqlite'}"
        fixture, how_to_get_it = SERVERS[self.backend]
        server = self.request.getfixturevalue(fixture)
        if server is None:
            skip_or_fail(how_to_get_it)
        url = server.create_database()
        self.created.append((server, url))
        if self.backend == "mysql-url":
            return as_mysql_url(url)
        return url

    def for_step(self, step):
        """Return the databases of a step's app: DATABASE_URL, and for the
        steps that have a second database, AUDIT_DATABASE_URL."""
        urls = {"DATABASE_URL": self.create("test")}
        if step in STEPS_WITH_TWO_DATABASES:
            urls["AUDIT_DATABASE_URL"] = self.create("audit")
        return urls

    def drop(self):
        """Drop the server databases created so far."""
        for server, url in self.created:
            server.drop_database(url)


def as_mysql_url(url):
    """Return a MariaDB URL spelt ``mysql+pymysql://``, as MySQL's users write it."""
    return (
        make_url(url)
        .set(drivername="mysql+pymysql")
        .render_as_string(hide_password=False)
    )


@pytest.fixture
def new_database(backend, tmp_path, request):
    """Return a function that creates an empty database of the test's own."""
    databases = Databases(backend, tmp_path, request)
    yield databases.create
    databases.drop()


@pytest.fixture
def database_url(new_database):
    """Return the URL of an empty database of the test's own."""
    return new_database("test")


@pytest.fixture(autouse=True)
def audit_database_in_tmp(tmp_path, monkeypatch):
    """Keep step 6's audit database out of the instance folder in every test.

    Apps and servers a test starts read AUDIT_DATABASE_URL from the
    environment: a SQLite file of the test's own, unless the test gives
    them one on its backend (databases_for).
    """
    monkeypatch.setenv("AUDIT_DATABASE_URL", f"sqlite:///{tmp_path / 'audit.sqlite'}")


@pytest.fixture
def databases_for(database_url, new_database):
    """Return a function that names the databases of a step's app, on the
    test's backend: DATABASE_URL, and AUDIT_DATABASE_URL for the steps
    that have a second database."""
    audit_database_url = []

    def databases(step):
        urls = {"DATABASE_URL": database_url}
        if step in STEPS_WITH_TWO_DATABASES:
            if not audit_database_url:
                audit_database_url.append(new_database("audit"))
            urls["AUDIT_DATABASE_URL"] = audit_database_url[0]
        return urls

    return databases


def is_slow(item):
    """Whether a test takes seconds rather than milliseconds: it is marked
    slow (a browser, a kernel, gunicorn, load), or it serves a step with
    flask run."""
    return item.get_closest_marker("slow") is not None or "serve" in item.fixturenames


# The modules whose subject step 11 changes: the contract, where the
# schema comes from (steps 5 and 6, MariaDB's character sets), test
# isolation (step 7: a migration runs inside isolated()), and its notebook,
# which migrates on a PostgreSQL of its own.
ABOUT_THE_SCHEMA = {
    "tests.test_contract",
    "tests.test_notebooks",
    "tests.test_step05_reflection",
    "tests.test_step06_multiple_databases",
    "tests.test_step07_testing",
    "tests.test_mariadb",
}


def runs_as_the_step_before_on_a_server(item):
    """Whether a test runs, on a server database, a step whose app runs or
    serves as the step before's, outside that step's own tests: step 7
    (step 6's app), or step 11 outside the tests about the schema."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    step, backend = params.get("shared_client") or (
        params.get("step"),
        params.get("backend"),
    )
    module = item.module.__name__
    if backend not in SERVERS or module == f"tests.test_{step}":
        return False
    if step in RUNS_AS_THE_STEP_BEFORE:
        return True
    return step in SERVES_AS_THE_STEP_BEFORE and module not in ABOUT_THE_SCHEMA


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Leave steps 7 and 11 out on the servers, and run the slow tests first.

    Step 7's db.py, models.py and views.py are step 6's, byte for byte
    (tests/test_layout.py): on PostgreSQL and MariaDB, the shared suite and
    the other steps' tests run step 6 for it, and step 7's own tests run
    there too. Step 11 serves requests as step 10 does: there, the tests
    about the schema and its own run it. On SQLite every test runs both.

    pytest-xdist hands the tests out in the order left, two at a time
    (--maxschedchunk in the Makefile): each worker takes the next slow
    test as it finishes one, and the run ends on short tests that all the
    workers share, rather than on one worker with a minute of load left.
    """
    left_out = [item for item in items if runs_as_the_step_before_on_a_server(item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        kept = set(items) - set(left_out)
        items[:] = [item for item in items if item in kept]
    items.sort(key=lambda item: not is_slow(item))


def pytest_sessionfinish(session, exitstatus):
    """In CI, fail a run in which any test was skipped."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") and skipped and exitstatus == pytest.ExitCode.OK:
        reporter.write_line(f"CI: {len(skipped)} tests skipped; every test must run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def create_app_with_tables(step, databases, engine_options=None, **config):
    """Create a step's app on its databases, once init-db has run on them."""
    create_app = import_step(step).create_app
    initialize_databases(create_app, databases)
    return create_app(
        {
            "TESTING": True,
            **databases,
            "ENGINE_OPTIONS": engine_options or {},
            **config,
        }
    )


@pytest.fixture
def make_app(databases_for):
    """Return a factory of step apps on the test's databases, tables created."""
    apps = []

    def make(step, engine_options=None, **config):
        app = create_app_with_tables(
            step, databases_for(step), engine_options, **config
        )
        apps.append(app)
        return app

    yield make

    for app in apps:
        close_app(app)


@pytest.fixture(
    scope="module",
    params=[(step, backend) for step in STEPS for backend in CONTRACT_BACKENDS],
    ids=lambda param: "-".join(param),
)
def shared_client(request, tmp_path_factory):
    """Return a test client of one app per step and database, for a module.

    Only for tests that leave the database as they found it, and check that
    they did (bad input, routing errors): one app, and one database, serve
    them all, which spares each a database and two apps of its own.
    """
    step, backend = request.param
    databases = Databases(backend, tmp_path_factory.mktemp(step), request)
    app = create_app_with_tables(step, databases.for_step(step))
    yield app.test_client()
    close_app(app)
    databases.drop()


@pytest.fixture
def app(step, make_app):
    """Return the step's app with default settings."""
    return make_app(step)


@pytest.fixture
def client(app):
    """Return a test client that runs requests in the test's own thread."""
    return app.test_client()


@pytest.fixture
def serve(databases_for, tmp_path):
    """Return a function that starts a step under ``flask run``."""
    servers = []

    def start(step, init_db=True, **env):
        log_path = tmp_path / f"server-{len(servers)}.log"
        env = {**databases_for(step), **env}
        server = LiveServer(step, env, log_path, init_db=init_db)
        servers.append(server)
        return server

    yield start

    for server in servers:
        server.stop()
