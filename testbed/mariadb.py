r"""MariaDB: a throwaway server of its own, or a server you already have.

An Instance is mariadb-install-db and mariadbd in a temporary folder, on a
free loopback port, run as an unprivileged user (mariadbd refuses root); a
Server is one you already have (the tests take TEST_MARIADB_URL's, a server
on which they may create databases). Each test gets a database of its own
(create_database), in utf8mb4: MySQL's "utf8" is a 3-byte subset that
cannot hold an emoji.

URLs name the dialect mariadb and the driver PyMySQL (docs/databases.md says
why this driver): ``mariadb+pymysql://root@127.0.0.1:PORT/NAME?charset=utf8mb4``.

Run as a program, it starts such a server for a command of yours, with
DATABASE_URL naming a database on it (and AUDIT_DATABASE_URL a second one,
for step 6), and deletes it when the command ends (``make run DB=mariadb``
does so):

    .venv/bin/python -m testbed.mariadb sh -c \
        '.venv/bin/flask --app step04_pooling init-db &&
         .venv/bin/flask --app step04_pooling run'
"""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pymysql
from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from .accounts import run_as
from .accounts import unprivileged_user
from .command import run_on_throwaway_databases
from .loopback import free_port

HOW_TO_GET_MARIADB = (
    "MariaDB's mariadbd and mariadb-install-db were not found: install them "
    "(Debian: apt-get install mariadb-server), or set TEST_MARIADB_URL to a "
    "server where the tests may create databases"
)

# Debian's package makes the account mysql.
MARIADB_ACCOUNTS = ("mysql", "nobody")

# The URL query of every connection: 4-byte UTF-8, which PyMySQL asks for
# by default too, said here so that a reader's URL says it.
CHARSET_QUERY = {"charset": "utf8mb4"}


def find_binaries():
    """Return the paths of mariadbd and mariadb-install-db, or None."""
    server = shutil.which("mariadbd") or next(
        (path for path in ("/usr/sbin/mariadbd",) if os.access(path, os.X_OK)), None
    )
    install = shutil.which("mariadb-install-db")
    if server is None or install is None:
        return None
    return server, install


class Server:
    """A MariaDB server on which each test creates a database."""

    can_stop = False

    def __init__(self, admin_url):
        self.admin_url = make_url(admin_url)
        # One connection creates and drops every test's databases.
        self._admin = create_engine(
            self.admin_url,
            isolation_level="AUTOCOMMIT",
            pool_size=1,
            # The drills stop and restart the server under it.
            pool_pre_ping=True,
        )

    def admin_engine(self):
        """Return an engine on the server, outside transactions."""
        return create_engine(
            self.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool
        )

    def create_database(self, name=None):
        """Create an empty utf8mb4 database and return its URL."""
        # A database is a folder to MariaDB: cheap to make, one per test.
        name = name or f"test_{uuid.uuid4().hex[:16]}"
        with self._admin.connect() as connection:
            connection.exec_driver_sql(
                f"CREATE DATABASE `{name}`"
                " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url):
        """Drop a database that create_database() made, ending its connections."""
        name = make_url(url).database
        with self._admin.connect() as connection:
            # DROP DATABASE waits for every open transaction on its tables
            # (their metadata locks): end the connections that use it first,
            # a server's the test may have left behind.
            connection_ids = connection.exec_driver_sql(
                "SELECT id FROM information_schema.processlist"
                " WHERE db = %s AND id != CONNECTION_ID()",
                (name,),
            ).scalars()
            for connection_id in connection_ids:
                with contextlib.suppress(Exception):
                    # It may have ended meanwhile (1094: unknown thread id).
                    connection.exec_driver_sql(f"KILL {int(connection_id)}")
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")

    def close(self):
        """Close the connection."""
        self._admin.dispose()


class Instance(Server):
    """A server of its own, in a temporary folder, on loopback."""

    can_stop = True

    def __init__(self, binaries, port, settings=None):
        self.server_program, install_program = binaries
        self.port = port
        # Server options over those of start(), as mariadbd's --name=value:
        # the gone-away drill's short wait_timeout.
        self.settings = settings or {}
        self.folder = tempfile.mkdtemp(prefix="flask-sqlalchemy-mariadb-")
        self.data = os.path.join(self.folder, "data")
        self.log = os.path.join(self.folder, "server.log")
        self.socket = os.path.join(self.folder, "mariadb.sock")
        # Temporary tables in a folder of this server's own: in the shared
        # /tmp, servers bootstrapped at once (one per test worker) remove
        # each other's and mariadb-install-db fails ("Unknown table
        # 'mysql.tmp_user_sys'").
        self.temporary = os.path.join(self.folder, "tmp")
        os.mkdir(self.temporary)
        self.owner = unprivileged_user(MARIADB_ACCOUNTS) if os.geteuid() == 0 else None
        if self.owner is not None:
            for folder in (self.folder, self.temporary):
                os.chown(folder, self.owner.pw_uid, self.owner.pw_gid)
        self.process = None
        super().__init__(
            URL.create(
                "mariadb+pymysql",
                username="root",
                host="127.0.0.1",
                port=port,
                query=CHARSET_QUERY,
            )
        )
        # root without a password, as the tests' PostgreSQL trusts postgres:
        # the server listens on loopback only, for one run.
        installed = subprocess.run(
            [
                install_program,
                # No my.cnf of the machine's: this server's settings are all here.
                "--no-defaults",
                f"--datadir={self.data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                # Passed on to the server that builds the system tables.
                f"--tmpdir={self.temporary}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.folder,
            timeout=60,
            **run_as(self.owner),
        )
        if installed.returncode != 0:
            # Its last lines name the cause; its first ones are advice.
            raise RuntimeError(
                f"mariadb-install-db failed ({installed.returncode}):\n"
                + "\n".join(installed.stdout.splitlines()[-5:])
            )
        self.start()

    def start(self, seconds=30):
        """Start the server and wait until it accepts connections."""
        options = {
            "datadir": self.data,
            "tmpdir": self.temporary,
            "socket": self.socket,
            "port": self.port,
            "bind-address": "127.0.0.1",
            "pid-file": os.path.join(self.folder, "mariadbd.pid"),
            "log-error": self.log,
            # Without --no-defaults' my.cnf the server would speak latin1.
            "character-set-server": "utf8mb4",
            "collation-server": "utf8mb4_unicode_ci",
            # A throwaway server needs no durability: faster tests.
            "innodb-flush-log-at-trx-commit": 0,
            "innodb-doublewrite": 0,
            "innodb-buffer-pool-size": "32M",
            **self.settings,
        }
        self.process = subprocess.Popen(
            [
                self.server_program,
                "--no-defaults",
                # Clients by address only: no reverse DNS for 127.0.0.1.
                "--skip-name-resolve",
                *(f"--{name}={value}" for name, value in options.items()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.folder,
            **run_as(self.owner),
        )
        deadline = time.monotonic() + seconds
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited\n{self.server_log()}")
            try:
                pymysql.connect(
                    host="127.0.0.1", port=self.port, user="root", connect_timeout=1
                ).close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, seconds=30):
        """Stop the server (a clean shutdown) and wait until it is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self):
        """Stop the server, ending every connection, and start it again."""
        self.stop()
        self.start()

    def destroy(self):
        """Stop the server if it runs, and delete its folder."""
        self._admin.dispose()
        if self.process is not None and self.process.poll() is None:
            # Nothing in it is worth a clean shutdown.
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def server_log(self):
        """Return what the server has logged."""
        try:
            with open(self.log, errors="replace") as log:
                return log.read()
        except FileNotFoundError:
            return ""


def run_on_a_throwaway_server(command):
    """Run a command with DATABASE_URL and AUDIT_DATABASE_URL on a MariaDB of
    its own; return its status."""
    binaries = find_binaries()
    if binaries is None:
        raise SystemExit(HOW_TO_GET_MARIADB)
    return run_on_throwaway_databases(
        command, "MariaDB", lambda: Instance(binaries, free_port())
    )


if __name__ == "__main__":
    sys.exit(run_on_a_throwaway_server(sys.argv[1:]))
