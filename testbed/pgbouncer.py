r"""PgBouncer for step 8: Debian's pgbouncer in front of a small PostgreSQL.

SmallServer is a cluster with a small ``max_connections``, and PgBouncer a
pgbouncer in transaction mode in front of it, both on free loopback ports
and run as an unprivileged user, as both refuse to run as root. The app
connects as ``app``, an ordinary role: when it has taken every connection
the server allows it, a superuser (with the reserved slots) can still look
at ``pg_stat_activity``.

Run as a program, it starts both for a command of yours, with DATABASE_URL
and AUDIT_DATABASE_URL going through PgBouncer and FLASK_BEHIND_POOLER=true
(``make run STEP=step08_pgbouncer DB=pgbouncer`` does so):

    .venv/bin/python -m testbed.pgbouncer sh -c \
        '.venv/bin/flask --app step08_pgbouncer init-db &&
         .venv/bin/flask --app step08_pgbouncer run'
"""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from .accounts import run_as
from .accounts import unprivileged_user
from .command import run_with_servers
from .loopback import free_port
from .postgres import HOW_TO_GET_POSTGRES
from .postgres import POSTGRES_ACCOUNTS
from .postgres import Cluster
from .postgres import find_binaries
from .stopping import stop_process

HOW_TO_GET_PGBOUNCER = (
    "pgbouncer was not found: install it (Debian: apt-get install pgbouncer); "
    "step 8's drills run the real one"
)

# The server's limit, small so that a few processes reach it. Three of the
# slots are kept for superusers (superuser_reserved_connections), so the
# app's role gets 17.
MAX_CONNECTIONS = 20
APP_CONNECTIONS_ALLOWED = MAX_CONNECTIONS - 3
# PgBouncer's server connections per database (and user): two databases,
# so at most 2 * 5 = 10 of the server's 17.
POOL_SIZE = 5
# The role the app connects as, and its two databases.
APP_ROLE = "app"
DATABASES = ("messages", "audit")


def find_pgbouncer():
    """Return the path of the pgbouncer program, or None."""
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer",) if os.access(path, os.X_OK)),
        None,
    )


def pgbouncer_version():
    """Return the installed PgBouncer's version, as (major, minor)."""
    output = subprocess.run(
        [find_pgbouncer(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    major, minor = re.search(r"PgBouncer (\d+)\.(\d+)", output).groups()
    return int(major), int(minor)


class SmallServer(Cluster):
    """A throwaway cluster with a small max_connections and an app role."""

    def __init__(self, bindir, port):
        super().__init__(bindir, port, settings={"max_connections": MAX_CONNECTIONS})
        with self.admin_engine().connect() as connection:
            connection.exec_driver_sql(f"CREATE ROLE {APP_ROLE} LOGIN")

    def create_app_database(self, name):
        """Create a database that the app's role owns; return its direct URL."""
        with self.admin_engine().connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}" OWNER {APP_ROLE}')
        return self.url_of(name)

    def url_of(self, name):
        """Return the URL on which the app's role reaches a database directly."""
        return self.admin_url.set(username=APP_ROLE, database=name).render_as_string(
            hide_password=False
        )

    def app_connections(self, database=None):
        """Return how many connections the app's role holds on the server now."""
        query = "SELECT count(*) FROM pg_stat_activity WHERE usename = :role"
        parameters = {"role": APP_ROLE}
        if database is not None:
            query += " AND datname = :database"
            parameters["database"] = database
        with self.admin_engine().connect() as connection:
            return connection.execute(text(query), parameters).scalar()


class PgBouncer:
    """Debian's pgbouncer, in transaction mode, on a free loopback port."""

    def __init__(self, server, pool_mode="transaction", pool_size=POOL_SIZE):
        self.server = server
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="flask-sqlalchemy-pgbouncer-")
        self.log = os.path.join(self.folder, "pgbouncer.log")
        self.owner = unprivileged_user(POSTGRES_ACCOUNTS) if os.geteuid() == 0 else None
        config = os.path.join(self.folder, "pgbouncer.ini")
        users = os.path.join(self.folder, "users.txt")
        with open(users, "w") as file:
            # auth_type = trust still wants each user listed.
            file.write(f'"{APP_ROLE}" ""\n"postgres" ""\n')
        with open(config, "w") as file:
            file.write(
                "\n".join(
                    [
                        "[databases]",
                        # Any database name, passed on to the one server.
                        f"* = host=127.0.0.1 port={server.port}",
                        "[pgbouncer]",
                        "listen_addr = 127.0.0.1",
                        f"listen_port = {self.port}",
                        # No Unix socket: loopback TCP only.
                        "unix_socket_dir =",
                        "auth_type = trust",
                        f"auth_file = {users}",
                        # A server connection serves one transaction, then
                        # goes back to PgBouncer's pool for any client.
                        f"pool_mode = {pool_mode}",
                        # Server connections per database and user.
                        f"default_pool_size = {pool_size}",
                        # Clients are cheap: a thousand, far more than the
                        # server's connections.
                        "max_client_conn = 1000",
                        # A client waits at most this long for a server
                        # connection, then gets an error (default 120 s):
                        # the app answers 503 rather than hang.
                        "query_wait_timeout = 5",
                        # After a failed login to the server (it restarts),
                        # try again within a second rather than 15.
                        "server_login_retry = 1",
                        f"logfile = {self.log}",
                        # From 1.21 on, PgBouncer can follow prepared
                        # statements itself (on by default from 1.24): off,
                        # as in Debian 12's 1.18, which the drills show.
                        *(
                            ["max_prepared_statements = 0"]
                            if pgbouncer_version() >= (1, 21)
                            else []
                        ),
                        "admin_users = postgres",
                        "",
                    ]
                )
            )
        if self.owner is not None:
            for path in (self.folder, config, users):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self.config = config
        self.process = None
        self.start()

    def url_of(self, name):
        """Return the URL on which the app's role reaches a database via PgBouncer."""
        return (
            make_url(self.server.url_of(name))
            .set(port=self.port)
            .render_as_string(hide_password=False)
        )

    def start(self):
        """Start PgBouncer and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [find_pgbouncer(), self.config],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Out of the caller's process group: a Ctrl-C meant for it (or
            # Jupyter interrupting a kernel) must not stop PgBouncer before
            # the caller's cleanup does.
            start_new_session=True,
            **run_as(self.owner),
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited:\n{self.read_log()}")
            try:
                # A login to PgBouncer's own console: it opens no server
                # connection, which the drills count.
                psycopg.connect(
                    host="127.0.0.1",
                    port=self.port,
                    user="postgres",
                    dbname="pgbouncer",
                ).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        """Stop PgBouncer at once, dropping every client and server connection."""
        if self.process is not None:
            stop_process(self.process)
        self.process = None

    def restart(self):
        """Stop PgBouncer and start it again on the same port."""
        self.stop()
        self.start()

    def destroy(self):
        """Stop PgBouncer and delete its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def read_log(self):
        """Return what PgBouncer has logged."""
        with (
            contextlib.suppress(FileNotFoundError),
            open(self.log, errors="replace") as log,
        ):
            return log.read()
        return ""


def run_behind_pgbouncer(command):
    """Run a command with both databases behind PgBouncer; return its status."""
    bindir = find_binaries()
    if bindir is None:
        raise SystemExit(HOW_TO_GET_POSTGRES)
    if find_pgbouncer() is None:
        raise SystemExit(HOW_TO_GET_PGBOUNCER)

    def start(cleanup):
        server = SmallServer(bindir, free_port())
        cleanup.callback(server.destroy)
        for name in DATABASES:
            server.create_app_database(name)
        pgbouncer = PgBouncer(server)
        cleanup.callback(pgbouncer.destroy)
        env = {
            "DATABASE_URL": pgbouncer.url_of("messages"),
            "AUDIT_DATABASE_URL": pgbouncer.url_of("audit"),
            "FLASK_BEHIND_POOLER": "true",
        }
        return env, (
            f"A throwaway PostgreSQL in {server.folder}"
            f" (max_connections={MAX_CONNECTIONS}), behind PgBouncer in"
            f" {pgbouncer.folder} on port {pgbouncer.port}, both deleted when"
            " this stops;" + "".join(f" {name}={value}" for name, value in env.items())
        )

    return run_with_servers(command, start)


if __name__ == "__main__":
    sys.exit(run_behind_pgbouncer(sys.argv[1:]))
