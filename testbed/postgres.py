r"""PostgreSQL: a throwaway cluster of its own, or a server you already have.

A Cluster is initdb and pg_ctl into a temporary folder, on a free loopback
port; a Server is one you already have (the tests take TEST_POSTGRES_URL's,
a server on which they may create databases). Each test gets a database of
its own (create_database), emptied afterwards for a later test
(drop_database).
A cluster started with ``tls=True`` accepts TLS, with a certificate made for
the run, and its URLs ask for it (tls_query).

Run as a program, it starts such a cluster for a command of yours, with
DATABASE_URL naming a database on it (and AUDIT_DATABASE_URL a second one,
for step 6), and deletes the cluster when the command ends (``make run
DB=postgresql`` does so):

    .venv/bin/python -m testbed.postgres sh -c \
        '.venv/bin/flask --app step04_pooling init-db &&
         .venv/bin/flask --app step04_pooling run'
"""

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from .accounts import run_as
from .accounts import unprivileged_user
from .command import run_on_throwaway_databases
from .loopback import free_port

# The accounts PostgreSQL runs as when the tests run as root: Debian's
# package makes postgres.
POSTGRES_ACCOUNTS = ("postgres", "nobody")

# How many empty databases a Server creates at a time (create_database), and
# the start of their names.
SPARE_DATABASES = 8
SPARE_PREFIX = "test_"

HOW_TO_GET_POSTGRES = (
    "PostgreSQL's initdb, pg_ctl and postgres were not found: install them "
    "(Debian: apt-get install postgresql), or set TEST_POSTGRES_URL to a "
    "server where the tests may create databases"
)


def find_binaries():
    """Return the folder that holds initdb, pg_ctl and postgres, or None."""
    candidates = []
    if on_path := shutil.which("pg_ctl"):
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    # Debian keeps them out of PATH, one folder per major version.
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda folder: int(folder.split("/")[-2]),
        reverse=True,
    )
    for folder in candidates:
        programs = [os.path.join(folder, name) for name in ("initdb", "pg_ctl")]
        if all(os.access(program, os.X_OK) for program in programs):
            return folder
    return None


class Server:
    """A PostgreSQL server on which each test creates a database."""

    can_stop = False

    def __init__(self, admin_url):
        self.admin_url = make_url(admin_url)
        # One connection creates and drops every test's databases, rather
        # than a new one (a new server process) for each.
        self._admin = create_engine(
            self.admin_url,
            isolation_level="AUTOCOMMIT",
            pool_size=1,
            # The drills stop and restart the server under it.
            pool_pre_ping=True,
        )
        self._spare_databases = []

    def admin_engine(self):
        """Return an engine on the maintenance database, outside transactions."""
        return create_engine(
            self.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool
        )

    def create_database(self, name=None):
        """Create an empty database and return its URL."""
        if name is None:
            if not self._spare_databases:
                # CREATE DATABASE forces a checkpoint, which is dear after a
                # test's writes and cheap right after another: create a
                # few at a time, and hand them out one by one.
                self._spare_databases = [
                    self._create(f"{SPARE_PREFIX}{uuid.uuid4().hex[:16]}")
                    for _ in range(SPARE_DATABASES)
                ]
            name = self._spare_databases.pop()
        else:
            self._create(name)
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def _create(self, name):
        with self._admin.connect() as connection:
            version = int(
                connection.exec_driver_sql("SHOW server_version_num").scalar()
            )
            # From PostgreSQL 15 on, copying the template's files is several
            # times faster than the default, WAL_LOG, for a small template.
            strategy = " STRATEGY = FILE_COPY" if version >= 150000 else ""
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"{strategy}')
        return name

    def drop_database(self, url):
        """Drop a database that create_database() made, connections and all.

        One of the spares it hands out is emptied instead, and handed out
        again: far cheaper than a new one, whose CREATE DATABASE waits for a
        checkpoint of every other test's writes.
        """
        name = make_url(url).database
        if name.startswith(SPARE_PREFIX):
            try:
                emptied = self._empty(url)
            except DBAPIError:
                # A lock held past lock_timeout, a server stopped: drop it.
                emptied = False
            if emptied:
                self._spare_databases.append(name)
                return
        with self._admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _empty(self, url):
        """Leave a database as CREATE DATABASE made it: no connection to it, no
        setting of its own, and an empty public schema. Say whether it did."""
        name = make_url(url).database
        with self._admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.exec_driver_sql(f'ALTER DATABASE "{name}" RESET ALL')
        engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                # Gone as the next test starts, so that no count of the
                # database's connections finds one of this test's.
                for _ in range(100):
                    others = connection.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                            " current_database() AND pid <> pg_backend_pid()"
                        )
                    ).scalar()
                    if not others:
                        break
                    time.sleep(0.05)
                else:
                    return False
                connection.exec_driver_sql("SET lock_timeout = '5s'")
                connection.exec_driver_sql("DROP SCHEMA public CASCADE")
                connection.exec_driver_sql("CREATE SCHEMA public")
        finally:
            engine.dispose()
        return True

    def close(self):
        """Drop the spare databases no test took, and close the connection."""
        for name in self._spare_databases:
            self.drop_database(self.admin_url.set(database=name))
        self._spare_databases = []
        self._admin.dispose()


class Cluster(Server):
    """A cluster of its own, in a temporary folder, on loopback."""

    can_stop = True

    def __init__(self, bindir, port, settings=None, tls=False):
        self.bindir = bindir
        self.port = port
        # Server settings over those of start(): step 8's drills need a
        # small max_connections.
        self.settings = settings or {}
        self.folder = tempfile.mkdtemp(prefix="flask-sqlalchemy-postgres-")
        self.data = os.path.join(self.folder, "data")
        self.log = os.path.join(self.folder, "server.log")
        # PostgreSQL refuses to run as root: run it as an unprivileged user.
        self.owner = unprivileged_user(POSTGRES_ACCOUNTS) if os.geteuid() == 0 else None
        if self.owner is not None:
            os.chown(self.folder, self.owner.pw_uid, self.owner.pw_gid)
        # With tls=True, the server accepts TLS with a certificate made for
        # the run, and every URL of the cluster's asks for it (tls_query).
        self.ca_file = self._make_certificates() if tls else None
        super().__init__(
            URL.create(
                "postgresql+psycopg",
                username="postgres",
                host="127.0.0.1",
                port=port,
                database="postgres",
                query=tls_query(self.ca_file) if tls else {},
            )
        )
        self.make_data_folder()
        self.start()

    def make_data_folder(self):
        """Make the cluster's data folder: a new, empty cluster."""
        self._run(
            "initdb",
            *("-D", self.data, "-U", "postgres", "--auth=trust"),
            *("--encoding=UTF8", "--no-locale", "--no-sync"),
        )

    def _make_certificates(self):
        """Write a CA and a server certificate for loopback into the cluster's
        folder, have the server use them, and return the CA's file."""
        # Imported here: only the tests' TLS cluster needs it.
        import trustme

        authority = trustme.CA()
        certificate = authority.issue_cert("127.0.0.1", "localhost")
        files = {
            "ca.crt": (authority.cert_pem.bytes(), 0o644),
            "server.crt": (
                b"".join(pem.bytes() for pem in certificate.cert_chain_pems),
                0o644,
            ),
            # PostgreSQL refuses a key that others than its owner may read.
            "server.key": (certificate.private_key_pem.bytes(), 0o600),
        }
        for name, (content, mode) in files.items():
            path = os.path.join(self.folder, name)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(descriptor, "wb") as file:
                file.write(content)
            if self.owner is not None:
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self.settings = {
            "ssl": "on",
            "ssl_cert_file": os.path.join(self.folder, "server.crt"),
            "ssl_key_file": os.path.join(self.folder, "server.key"),
            **self.settings,
        }
        return os.path.join(self.folder, "ca.crt")

    def start(self):
        """Start the server and wait until it accepts connections."""
        options = " ".join(
            [
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}",
                # A throwaway cluster needs no durability: faster tests.
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                # Two-phase commit, off by default, for step 6's drill.
                "-c max_prepared_transactions=10",
                *(f"-c {name}={value}" for name, value in self.settings.items()),
            ]
        )
        self._run(
            "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start"
        )

    def stop(self, mode="fast"):
        """Stop the server and wait until it is gone."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self):
        """Stop the server, ending every connection, and start it again."""
        self.stop()
        self.start()

    def destroy(self):
        """Stop the server if it runs, and delete the cluster."""
        self._admin.dispose()
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop(mode="immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def server_log(self):
        """Return what the server has logged."""
        with open(self.log, errors="replace") as log:
            return log.read()

    def _run(self, program, *args):
        subprocess.run(
            [os.path.join(self.bindir, program), *args],
            check=True,
            capture_output=True,
            cwd=self.folder,
            env={**os.environ, "LC_ALL": "C"},
            timeout=60,
            **run_as(self.owner),
        )


def tls_query(ca_file):
    """Return the URL query of a client that connects over TLS only, to the
    server whose certificate the CA in ``ca_file`` signed."""
    # verify-full, not require: require encrypts but trusts any server;
    # this checks the certificate is the run's, for the host in the URL.
    return {"sslmode": "verify-full", "sslrootcert": ca_file}


def run_on_a_throwaway_cluster(command):
    """Run a command with DATABASE_URL and AUDIT_DATABASE_URL on a cluster of
    its own; return its status."""
    bindir = find_binaries()
    if bindir is None:
        raise SystemExit(HOW_TO_GET_POSTGRES)
    return run_on_throwaway_databases(
        command, "PostgreSQL", lambda: Cluster(bindir, free_port())
    )


if __name__ == "__main__":
    sys.exit(run_on_a_throwaway_cluster(sys.argv[1:]))
