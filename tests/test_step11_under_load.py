"""Step 11 under load: migrations while gunicorn serves, on PostgreSQL.

Zero downtime: an expand-and-contract change (add a nullable column, deploy
code that writes it, backfill it, then make it NOT NULL) runs under mixed
requests without a single 5xx; the same kind of change made in one step,
renaming a column the running code reads, fails every request after it,
each with a JSON 503.

Locks: an ALTER TABLE that waits behind a long transaction makes every
request of the table wait behind it. With MIGRATION_LOCK_TIMEOUT the
migration gives up and the app keeps answering; without it the requests
time out.

Each drill is real: gunicorn with three sync workers, ``flask db upgrade``
in a process of its own, client threads over loopback. The revisions are
written here, into a copy of the step's migrations folder in tmp_path:
the step's own chain stays as it is.
"""

import contextlib
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any
from typing import NamedTuple

import pytest
import requests
from alembic import command
from sqlalchemy import create_engine
from sqlalchemy import inspect
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from step11_migrations import create_app
from step11_migrations import migrate
from testbed import ROOT
from testbed.gunicorn import Gunicorn
from testbed.step_apps import close_app
from testbed.step_apps import initialize_databases
from testbed.threads import in_threads

# gunicorn, PostgreSQL and load: seconds each.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("backend", ["postgresql"]),
]

logger = logging.getLogger(__name__)

STEP = "step11_migrations"
# The step's code with messages.author declared: the release that writes it.
STEP_WITH_AUTHOR = "step11_with_author"
WORKERS = 3

# The load: a few clients, each pausing between requests so that the
# migrations' own processes get the CPU too. Bounded in count and time;
# each drill stops it as soon as it has what it measures.
CLIENTS = 4
REQUESTS_EACH = 2000
LOAD_SECONDS = 60
PAUSE = 0.02
# Answers to wait for around each stage, so that each runs under load.
ANSWERS_PER_STAGE = 20

# The expand-and-contract drill starts on a table with rows, which the
# backfill updates BATCH_SIZE at a time.
SEEDED_MESSAGES = 100
BATCH_SIZE = 25

# The lock drill: the migration waits for its lock at most LOCK_TIMEOUT
# seconds; the long transaction holds it HOLD_SECONDS once the ALTER TABLE
# waits; a client gives up on a request after CLIENT_TIMEOUT seconds: more
# than LOCK_TIMEOUT, so that a request the ALTER held up only that long is
# still answered, and less than HOLD_SECONDS, so that one held up for the
# whole hold is not.
LOCK_TIMEOUT = 1
CLIENT_TIMEOUT = 2
HOLD_SECONDS = 3


class Change(NamedTuple):
    """One revision's change to the messages table, and how to undo it."""

    why: str
    upgrade: str
    downgrade: str


ADD_AUTHOR = Change(
    "Add messages.author, nullable: the code that runs neither reads nor writes it.",
    'op.add_column("messages", sa.Column("author", sa.String(100), nullable=True))',
    'op.drop_column("messages", "author")',
)
AUTHOR_NOT_NULL = Change(
    "Make messages.author NOT NULL, now that every row has one.",
    'op.alter_column("messages", "author", existing_type=sa.String(100),'
    " nullable=False)",
    'op.alter_column("messages", "author", existing_type=sa.String(100),'
    " nullable=True)",
)
RENAME_TEXT = Change(
    "Rename messages.text to body in one step, while the code reads text.",
    'op.alter_column("messages", "text", new_column_name="body",'
    " existing_type=sa.String(500), existing_nullable=False)",
    'op.alter_column("messages", "body", new_column_name="text",'
    " existing_type=sa.String(500), existing_nullable=False)",
)

# The step's models.py, and the line the release with the author adds to
# its Message. A Python-side default: the views, unchanged, make
# Message(text=...), and the ORM's INSERT writes the author all the same.
CREATED_AT = (
    "    created_at: Mapped[datetime] = mapped_column(Timestamp,"
    " server_default=utc_now())\n"
)
AUTHOR = '    author: Mapped[str] = mapped_column(String(100), default="anonymous")\n'

# What gunicorn serves in the expand-and-contract drill: a module that
# imports the release's app. A deploy rewrites it and sends gunicorn HUP.
DEPLOYED = "from {package}.wsgi import app  # noqa: F401\n"


# The revisions, the releases, and the processes that run them.


def migrations_with(tmp_path, databases, *changes):
    """Copy the step's migrations folder into tmp_path, and add a revision
    for each change, as a person would: ``flask db revision``, numbered
    after the step's last (0002), then the change written into it. Return
    the copy."""
    folder = tmp_path / "migrations"
    shutil.copytree(
        ROOT / STEP / "migrations",
        folder,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    app = create_app({**databases, "MIGRATIONS_FOLDER": str(folder)})
    try:
        for number, change in enumerate(changes, start=3):
            with app.app_context():
                script = command.revision(
                    migrate.alembic_config(), change.why, rev_id=f"{number:04d}"
                )
            fill_in(pathlib.Path(script.path), change)
    finally:
        close_app(app)
    return folder


def fill_in(revision, change):
    """Write the change into the messages database's functions of a revision
    that the step's script.py.mako wrote; the audit database's stay empty."""
    source = revision.read_text()
    for function, body in [
        ("upgrade_messages", change.upgrade),
        ("downgrade_messages", change.downgrade),
    ]:
        empty = f"def {function}() -> None:\n    pass\n"
        assert source.count(empty) == 1, source
        source = source.replace(empty, f"def {function}() -> None:\n    {body}\n")
    revision.write_text(source)


def release_with_author(tmp_path):
    """Copy the step into tmp_path as another package whose Message declares
    the author column."""
    package = tmp_path / STEP_WITH_AUTHOR
    shutil.copytree(
        ROOT / STEP,
        package,
        ignore=shutil.ignore_patterns("__pycache__", "example_tests"),
    )
    models = package / "models.py"
    source = models.read_text()
    assert source.count(CREATED_AT) == 1
    models.write_text(source.replace(CREATED_AT, CREATED_AT + AUTHOR))


def environment(databases, tmp_path, **config):
    """Return the environment of the step's processes: its databases, the
    packages in tmp_path importable, and config keys as FLASK_ variables."""
    paths = [str(tmp_path), os.environ.get("PYTHONPATH", "")]
    return {
        **databases,
        "PYTHONPATH": os.pathsep.join(filter(None, paths)),
        # A cached .pyc is checked against its source's size and mtime, to
        # the second: deployed.py, rewritten, could pass for the old one.
        "PYTHONDONTWRITEBYTECODE": "1",
        # JSON, as the app reads FLASK_ variables: null is None.
        **{f"FLASK_{key}": json.dumps(value) for key, value in config.items()},
    }


def serve(app, env, tmp_path):
    """Return gunicorn serving ``app`` with three sync workers, on the step's
    environment; as a context manager, it stops after the block."""
    return Gunicorn(
        app,
        [
            *("--workers", str(WORKERS), "--log-level", "warning"),
            # A worker told to stop finishes its request first, for at most
            # this long: on HUP, and as the drill ends.
            *("--graceful-timeout", "10"),
        ],
        env,
        tmp_path / "gunicorn.log",
    )


@contextlib.contextmanager
def flask_command(package, env, *args):
    """Start ``flask --app package ...`` in a process of its own, as a
    person would; kill it if the block leaves before it ends."""
    with subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", package, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def finished(process, seconds=60):
    """Wait for a flask command; return its exit status and what it printed."""
    output, _ = process.communicate(timeout=seconds)
    return process.returncode, output


def flask_db(package, env, *args):
    """Run ``flask db ...`` to its end; return its exit status and output."""
    with flask_command(package, env, "db", *args) as process:
        return finished(process)


def write_deployed(tmp_path, package):
    """Make deployed.py, what gunicorn serves, import the package's app."""
    (tmp_path / "deployed.py").write_text(DEPLOYED.format(package=package))


def worker_pids(gunicorn):
    """Return the pids of gunicorn's workers: its master's children."""
    pid = gunicorn.process.pid
    children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in children.split()}


def deploy(gunicorn, tmp_path, package):
    """Deploy a release the way gunicorn allows without a refused connection:
    point deployed.py at it and send HUP. The master keeps the listening
    socket, starts new workers, which import the app anew, and stops the old
    ones once they have answered the request in hand. (A second server
    would need a proxy in front to move the clients over, and the old one
    stopped once idle.) Return once no old worker is left, so that no
    request runs the old code any more."""
    old = worker_pids(gunicorn)
    write_deployed(tmp_path, package)
    gunicorn.process.send_signal(signal.SIGHUP)

    def replaced():
        workers = worker_pids(gunicorn)
        return len(workers) == WORKERS and not workers & old

    wait_until(replaced, "gunicorn to replace every worker")


def wait_until(condition, what, seconds=30):
    """Wait until ``condition()`` is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def connected(url, **engine_options):
    """Connect to a database outside the app, on a connection of its own."""
    engine = create_engine(url, poolclass=NullPool, **engine_options)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def revision_of(url):
    """Return the revision a database's version table records."""
    with connected(url) as connection:
        return connection.scalar(text("SELECT version_num FROM alembic_version"))


# The load.


class Answer(NamedTuple):
    """A request of the load, and its answer."""

    request: str
    # None: no answer (a timeout, a refused connection); why, in body.
    status: int | None
    body: Any
    is_json: bool
    sent: float
    answered: float


def mixed_request(number, count, last_id):
    """Return a client's next request as (method, path, JSON body): of each
    four, a list, a new message, a read of its last one and an edit of it."""
    kind = count % 4
    if kind == 1 or (kind > 1 and last_id is None):
        return "POST", "/messages", {"text": f"client {number}, message {count}"}
    if kind == 2:
        return "GET", f"/messages/{last_id}", None
    if kind == 3:
        return "PATCH", f"/messages/{last_id}", {"text": f"edited {count}"}
    return "GET", "/messages", None


class MixedLoad:
    """Client threads sending mixed requests to a server, from the block's
    start until its end, within REQUESTS_EACH requests and LOAD_SECONDS.

    Each request opens a connection of its own, as a sync worker closes
    each after its answer; each answer is in ``answers`` as it comes.
    """

    def __init__(self, url, timeout=30):
        self.url = url
        self.timeout = timeout
        self.answers = []
        self.stop = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self.run)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join()
        if self.errors:
            raise self.errors[0]

    def run(self):
        try:
            in_threads(self.client, CLIENTS, self.stop, seconds=LOAD_SECONDS)
        except BaseException as error:
            self.errors.append(error)

    def client(self, number, stop):
        last_id = None
        with requests.Session() as http:
            for count in range(REQUESTS_EACH):
                if stop.is_set():
                    return
                answer = self.send(http, *mixed_request(number, count, last_id))
                if answer.status == 201:
                    last_id = answer.body["id"]
                self.answers.append(answer)
                time.sleep(PAUSE)

    def send(self, http, method, path, body):
        sent = time.monotonic()
        try:
            response = http.request(
                method, self.url + path, json=body, timeout=self.timeout
            )
        except requests.RequestException as error:
            status, body, is_json = None, repr(error), False
        else:
            status = response.status_code
            is_json = response.headers.get("Content-Type") == "application/json"
            body = response.json() if is_json else response.text
        return Answer(f"{method} {path}", status, body, is_json, sent, time.monotonic())

    def sent_since(self, moment):
        """Return the answers to the requests sent at ``moment`` or later."""
        return [answer for answer in list(self.answers) if answer.sent >= moment]

    def wait_for_answers(self, count=ANSWERS_PER_STAGE):
        """Wait until ``count`` requests sent from now on are answered."""
        now = time.monotonic()
        wait_until(lambda: len(self.sent_since(now)) >= count, f"{count} answers")


def server_errors(answers):
    """Return the answers that are not a success: a 5xx, or no answer."""
    return [
        answer for answer in answers if answer.status is None or answer.status >= 500
    ]


def wrote_the_author(answer):
    """Whether an answer shows a message with its author: the new code's."""
    return isinstance(answer.body, dict) and "author" in answer.body


def wrote_no_author(answer):
    """Whether an answer shows a message without an author: the old code's."""
    is_a_message = isinstance(answer.body, dict) and "text" in answer.body
    return is_a_message and not wrote_the_author(answer)


# Proof 4: zero downtime, and what one step costs.


def seed_messages(url, count):
    """Add ``count`` messages to the table, as a database in use has some."""
    with connected(url) as connection:
        connection.execute(
            text(
                "INSERT INTO messages (text)"
                " SELECT 'seeded ' || n FROM generate_series(1, :count) AS n"
            ),
            {"count": count},
        )
        connection.commit()


def backfill_authors(url, batch_size=BATCH_SIZE):
    """Give each message without an author one, a batch a transaction, as
    the app serves; return how many rows and batches it took.

    Each batch commits on its own: a request that edits a row the backfill
    holds waits for that batch only, not for the whole table's update, as
    it would inside one revision's transaction."""
    rows = batches = 0
    with connected(url) as connection:
        while True:
            updated = connection.execute(
                text(
                    "UPDATE messages SET author = 'anonymous' WHERE id IN"
                    " (SELECT id FROM messages WHERE author IS NULL"
                    " ORDER BY id LIMIT :batch_size)"
                ),
                {"batch_size": batch_size},
            ).rowcount
            connection.commit()
            if not updated:
                return rows, batches
            rows += updated
            batches += 1


def test_an_expand_and_contract_change_under_load_answers_every_request(
    databases_for, tmp_path
):
    databases = databases_for(STEP)
    url = databases["DATABASE_URL"]
    initialize_databases(create_app, databases)
    seed_messages(url, SEEDED_MESSAGES)
    env = environment(
        databases,
        tmp_path,
        MIGRATIONS_FOLDER=str(
            migrations_with(tmp_path, databases, ADD_AUTHOR, AUTHOR_NOT_NULL)
        ),
    )
    release_with_author(tmp_path)
    write_deployed(tmp_path, STEP)

    with (
        serve("deployed:app", env, tmp_path) as gunicorn,
        MixedLoad(gunicorn.url) as load,
    ):
        load.wait_for_answers()
        # 1. Expand: a nullable column, which the old code does not know of.
        status, output = flask_db(STEP, env, "upgrade", "0003")
        assert status == 0, output
        load.wait_for_answers()
        # 2. Deploy the code that writes it: gunicorn replaces its workers.
        deploy(gunicorn, tmp_path, STEP_WITH_AUTHOR)
        load.wait_for_answers()
        # 3. Backfill what the old code left NULL, now that nothing does.
        backfilled, batches = backfill_authors(url)
        load.wait_for_answers()
        # 4. Contract: NOT NULL, run by the new release.
        status, output = flask_db(STEP_WITH_AUTHOR, env, "upgrade")
        assert status == 0, output
        load.wait_for_answers()
    answers = load.answers

    # Every request answered, and not one answer a 5xx: the deploy and each
    # migration happened between requests, or held them up for a moment.
    assert server_errors(answers) == [], gunicorn.log()[-3000:]
    assert {answer.status for answer in answers} == {200, 201}
    # Both releases served: the old one's messages have no author.
    assert any(map(wrote_no_author, answers))
    assert any(map(wrote_the_author, answers))
    # The rows there before the column, and those the old code wrote after.
    assert backfilled > SEEDED_MESSAGES
    assert batches > SEEDED_MESSAGES // BATCH_SIZE
    # The schema the new release declares, at the chain's head in both
    # databases, which its models agree with.
    with connected(url) as connection:
        columns = inspect(connection).get_columns("messages")
        authors = connection.scalars(text("SELECT DISTINCT author FROM messages"))
        assert set(authors) == {"anonymous"}
    assert {column["name"]: column["nullable"] for column in columns} == {
        "id": False,
        "text": False,
        "created_at": False,
        "author": False,
    }
    assert {revision_of(url) for url in databases.values()} == {"0004"}
    status, output = flask_db(STEP_WITH_AUTHOR, env, "check")
    assert status == 0, output
    logger.info(
        "expand and contract: %d requests, %d not answered or 5xx;"
        " %d rows backfilled in %d batches",
        len(answers),
        len(server_errors(answers)),
        backfilled,
        batches,
    )


def test_renaming_a_column_the_running_code_reads_fails_each_request_after_it(
    databases_for, tmp_path
):
    databases = databases_for(STEP)
    initialize_databases(create_app, databases)
    env = environment(
        databases,
        tmp_path,
        MIGRATIONS_FOLDER=str(migrations_with(tmp_path, databases, RENAME_TEXT)),
    )

    with (
        serve(f"{STEP}.wsgi:app", env, tmp_path) as gunicorn,
        MixedLoad(gunicorn.url) as load,
    ):
        load.wait_for_answers()
        status, output = flask_db(STEP, env, "upgrade")
        renamed = time.monotonic()
        load.wait_for_answers()
    answers = load.answers

    assert status == 0, output
    failed = server_errors(answers)
    after = load.sent_since(renamed)
    # The old code's every statement names text: from the rename on, not
    # one request succeeds, reads and writes alike, until new code ships.
    assert {answer.status for answer in after} == {503}
    # Each failure is the database's error as a JSON 503, never a 500: the
    # app's handler for SQLAlchemy's errors, with the driver's reason.
    assert {answer.status for answer in failed} == {503}, gunicorn.log()[-3000:]
    assert all(answer.is_json for answer in failed)
    assert all("UndefinedColumn" in answer.body["error"] for answer in failed)
    assert {answer.request.split()[0] for answer in after} >= {"GET", "POST"}
    logger.info(
        "rename in one step: %d of %d requests answered 503; all %d sent after it",
        len(failed),
        len(answers),
        len(after),
    )


# Proof 5: a migration behind a long transaction.


class Hold(NamedTuple):
    """What a migration behind a long transaction came to, under load."""

    status: int
    output: str
    revision: str
    # Requests answered while the long transaction held the table; requests
    # that had no answer; most requests seen waiting for a lock at once.
    answered: int
    timed_out: int
    most_waiting: int


def waiting_for_locks(watcher):
    """Return the statements of the database's sessions that wait for a lock."""
    return list(
        watcher.scalars(
            text(
                "SELECT query FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    )


def migrate_behind_a_long_transaction(gunicorn, env, url, lock_timeout):
    """Under load, hold a transaction that has read messages, run ``flask db
    upgrade`` (an ALTER TABLE) behind it, and end the transaction
    HOLD_SECONDS after the ALTER TABLE starts to wait."""
    env = {**env, "FLASK_MIGRATION_LOCK_TIMEOUT": json.dumps(lock_timeout)}
    most_waiting = 0
    with (
        MixedLoad(gunicorn.url, timeout=CLIENT_TIMEOUT) as load,
        connected(url) as holder,
        # Autocommit: pg_stat_activity is read afresh at each statement.
        connected(url, isolation_level="AUTOCOMMIT") as watcher,
    ):
        load.wait_for_answers()
        # A report, a backup, a forgotten psql: its ACCESS SHARE lock keeps
        # no request out, and keeps ALTER TABLE's ACCESS EXCLUSIVE waiting.
        holder.execute(text("SELECT count(*) FROM messages"))
        with flask_command(STEP, env, "db", "upgrade") as migration:
            # Or its end: a failure before it, which the caller's
            # assertions show with the command's output.
            wait_until(
                lambda: (
                    migration.poll() is not None
                    or any(
                        query.startswith("ALTER TABLE")
                        for query in waiting_for_locks(watcher)
                    )
                ),
                "the ALTER TABLE to wait for its lock",
            )
            held = time.monotonic()
            while time.monotonic() < held + HOLD_SECONDS:
                requests_waiting = [
                    query
                    for query in waiting_for_locks(watcher)
                    if not query.startswith("ALTER TABLE")
                ]
                most_waiting = max(most_waiting, len(requests_waiting))
                time.sleep(0.1)
            released = time.monotonic()
            holder.rollback()
            status, output = finished(migration)
    during = [answer for answer in load.answers if held <= answer.answered < released]
    return Hold(
        status,
        output,
        revision_of(url),
        answered=sum(answer.status is not None for answer in during),
        timed_out=sum(answer.status is None for answer in load.answers),
        most_waiting=most_waiting,
    )


def test_a_lock_timeout_lets_the_migration_give_up_where_without_it_requests_time_out(
    databases_for, tmp_path
):
    databases = databases_for(STEP)
    url = databases["DATABASE_URL"]
    initialize_databases(create_app, databases)
    env = environment(
        databases,
        tmp_path,
        MIGRATIONS_FOLDER=str(migrations_with(tmp_path, databases, ADD_AUTHOR)),
    )

    with serve(f"{STEP}.wsgi:app", env, tmp_path) as gunicorn:
        limited = migrate_behind_a_long_transaction(gunicorn, env, url, LOCK_TIMEOUT)
        unlimited = migrate_behind_a_long_transaction(gunicorn, env, url, None)
        log = gunicorn.log()

    # With the step's lock_timeout, the ALTER TABLE gives up after a second,
    # the migration fails and says why, the database stays where it was,
    # and the requests it held up for that second are answered.
    assert limited.status != 0
    assert "canceling statement due to lock timeout" in limited.output
    assert limited.revision == "0002"
    assert limited.timed_out == 0, log[-3000:]
    # Without it, the ALTER TABLE waits as long as the transaction lasts,
    # and every request of the table waits behind it: clients give up.
    # What was answered meanwhile had its lock before the ALTER TABLE
    # queued: a request in hand, at most, in each worker.
    assert unlimited.status == 0, unlimited.output
    assert unlimited.revision == "0003"
    assert unlimited.timed_out > 0
    assert unlimited.answered <= WORKERS
    assert unlimited.most_waiting >= 1
    # The same load, the same hold: the contrast.
    assert limited.answered > unlimited.answered
    for name, hold in (("lock_timeout", limited), ("no limit", unlimited)):
        logger.info(
            "%s: exit %d, at %s; %d answered and %d timed out during the hold,"
            " %d requests waiting for a lock at most",
            name,
            hold.status,
            hold.revision,
            hold.answered,
            hold.timed_out,
            hold.most_waiting,
        )
