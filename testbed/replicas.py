"""PostgreSQL streaming replication: a primary and a hot standby of its own.

The primary is a throwaway Cluster; the standby is a copy of it that
``pg_basebackup -R`` makes over a replication connection, and that follows
it by streaming replication, read-only, on a port of its own. Both run on
loopback as an unprivileged user, and are deleted with ``destroy()``.

The standby's replay can be paused and resumed (``pause_replay``,
``resume_replay``), so that a test decides when it lags, rather than a
race; ``wait_for_replay`` waits until it has caught up.

Run as a program, it starts such a pair for a command of yours, with
DATABASE_URL and AUDIT_DATABASE_URL naming databases on the primary and
FLASK_REPLICA_DATABASE_URLS a JSON list of one, the messages database on
the standby (``make run DB=replicas`` does so):

    .venv/bin/python -m testbed.replicas sh -c \\
        '.venv/bin/flask --app step12_replicas init-db &&
         .venv/bin/flask --app step12_replicas run'
"""

import json
import sys
import time

from sqlalchemy import text
from sqlalchemy.engine import make_url

from .command import run_with_servers
from .loopback import free_port
from .postgres import HOW_TO_GET_POSTGRES
from .postgres import Cluster
from .postgres import find_binaries


class Standby(Cluster):
    """A hot standby of a Cluster: its copy, kept up to date by streaming
    replication, which answers reads and refuses writes."""

    def __init__(self, primary, port, settings=None):
        self.primary = primary
        super().__init__(primary.bindir, port, settings)

    def make_data_folder(self):
        """Copy the primary's data folder over a replication connection."""
        self._run(
            "pg_basebackup",
            *("--pgdata", self.data, "--host", "127.0.0.1"),
            *("--port", str(self.primary.port), "--username", "postgres"),
            # -R writes primary_conninfo and standby.signal: the copy
            # starts as a standby of the primary. Fast: a checkpoint now,
            # not one spread over minutes.
            "--write-recovery-conf",
            *("--wal-method", "stream", "--checkpoint", "fast", "--no-sync"),
        )

    def create_database(self, name=None):
        raise TypeError("a standby is read-only: create databases on its primary")

    def drop_database(self, url):
        raise TypeError("a standby is read-only: drop databases on its primary")

    def url_of(self, primary_url):
        """Return the URL of a primary's database on this standby."""
        return (
            make_url(primary_url)
            .set(port=self.port)
            .render_as_string(hide_password=False)
        )

    def replay_lsn(self):
        """Return the last WAL position replayed, as PostgreSQL writes it."""
        return self._query("SELECT pg_last_wal_replay_lsn()")

    def pause_replay(self):
        """Stop applying the primary's changes, and wait until it has: what
        the primary commits from now on is not seen here until resumed."""
        self._query("SELECT pg_wal_replay_pause()")
        self._wait_until(
            "SELECT pg_get_wal_replay_pause_state() = 'paused'", "replay to pause"
        )

    def resume_replay(self):
        """Apply the primary's changes again, those held back first."""
        self._query("SELECT pg_wal_replay_resume()")

    def wait_for_replay(self, seconds=30):
        """Wait until this standby has replayed all the primary has written."""
        with self.primary.admin_engine().connect() as connection:
            # Inserted, not written out: with synchronous_commit off (the
            # testbed's), a commit returns before its record is written.
            written = connection.execute(
                text("SELECT pg_current_wal_insert_lsn()")
            ).scalar()
        self._wait_until(
            f"SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn",
            f"replay up to {written}",
            seconds,
        )

    def promote(self):
        """Make this standby a primary, and wait until it accepts writes."""
        self._run("pg_ctl", "-D", self.data, "-w", "promote")

    def _query(self, query):
        with self.admin_engine().connect() as connection:
            return connection.execute(text(query)).scalar()

    def _wait_until(self, query, what, seconds=30):
        deadline = time.monotonic() + seconds
        while not self._query(query):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {seconds} s for {what}")
            time.sleep(0.01)


class Replication:
    """A primary and one hot standby of it, on loopback."""

    def __init__(self, bindir, primary_settings=None, standby_settings=None):
        self.primary = Cluster(bindir, free_port(), primary_settings)
        try:
            self.standby = Standby(self.primary, free_port(), standby_settings)
        except BaseException:
            self.primary.destroy()
            raise
        self.folder = f"{self.primary.folder} and {self.standby.folder}"

    def create_database(self, name=None):
        """Create a database on the primary, wait until the standby has it
        too, and return its URL on the primary."""
        url = self.primary.create_database(name)
        self.standby.wait_for_replay()
        return url

    def destroy(self):
        """Stop both servers and delete them."""
        self.standby.destroy()
        self.primary.destroy()


def run_on_a_throwaway_replication(command):
    """Run a command with its databases on a primary, and the standby's copy
    of the messages database in FLASK_REPLICA_DATABASE_URLS; return its
    status."""
    bindir = find_binaries()
    if bindir is None:
        raise SystemExit(HOW_TO_GET_POSTGRES)

    def start(cleanup):
        replication = Replication(bindir)
        cleanup.callback(replication.destroy)
        messages = replication.create_database("messages")
        env = {
            "DATABASE_URL": messages,
            "AUDIT_DATABASE_URL": replication.create_database("audit"),
            "FLASK_REPLICA_DATABASE_URLS": json.dumps(
                [replication.standby.url_of(messages)]
            ),
        }
        return env, (
            f"A throwaway PostgreSQL primary and standby in {replication.folder},"
            " deleted when this stops;"
            + "".join(f" {name}={url}" for name, url in env.items())
        )

    return run_with_servers(command, start)


if __name__ == "__main__":
    sys.exit(run_on_a_throwaway_replication(sys.argv[1:]))
