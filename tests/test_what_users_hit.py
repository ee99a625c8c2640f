"""Errors users of Flask and SQLAlchemy keep reporting, reproduced and answered.

The page "Problems users keep hitting" (docs/problems.md) links here for
the ones that no step's concept tests already reproduce.
"""

import inspect
import re
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm.exc import DetachedInstanceError
from sqlalchemy.pool import StaticPool

from testbed import ROOT
from testbed.step_apps import dispose_engines
from testbed.threads import run_in_new_thread

from .steps import STEPS
from .steps import import_step
from .steps import message_class
from .steps import steps_from


def test_scoped_session_declares_the_session_methods_that_linters_look_for():
    # SQLAlchemy 1.x attached these proxies at run time, so linters and IDEs
    # reported "Session.query is not defined". In 2.x they are real methods
    # of the class, with the Session's signatures.
    for name in ("query", "execute", "scalars", "get", "add", "commit", "remove"):
        assert name in vars(scoped_session), name
    assert "ident" in inspect.signature(scoped_session.get).parameters


# What a linter or an IDE checks: a scoped_session's Session methods, used
# as the article's readers use them, and one misspelled, which must fail.
TYPED_SNIPPET = """
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.orm import scoped_session, sessionmaker


class Base(DeclarativeBase):
    pass


class Message(Base):
    __tablename__ = "message"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(500))


Session = scoped_session(sessionmaker(bind=create_engine("sqlite://")))
legacy: list[Message] = Session.query(Message).all()
rows: list[Message] = list(Session.scalars(select(Message)).all())
one: Message | None = Session.get(Message, 1)
Session.remove()
misspelled = Session.qurey(Message)
"""


@pytest.mark.slow
def test_a_type_checker_sees_the_session_methods_of_scoped_session(tmp_path):
    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent(TYPED_SNIPPET))

    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
        + ["--cache-dir", str(tmp_path / "cache"), str(snippet)],
        capture_output=True,
        text=True,
        timeout=110,
    )

    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    # mypy checks the attributes: the misspelling is the only error.
    assert len(errors) == 1, checked.stdout
    assert 'has no attribute "qurey"' in errors[0]
    assert checked.returncode == 1


@pytest.mark.parametrize("step", STEPS)
def test_the_steps_use_select_not_the_legacy_query(step):
    source = "".join(path.read_text() for path in (ROOT / step).glob("*.py"))

    assert not re.search(r"\.query\(", source)


@pytest.mark.parametrize("step", steps_from("step03_teardown"))
def test_an_object_read_after_teardown_is_detached(step, make_app):
    app = make_app(step)
    app.test_client().post("/messages", json={"text": "before"})

    with app.app_context():
        session = app.extensions["session"]()
        message = session.get(message_class(app), 1)
        read_in_time = message.to_dict()
        message.text = "after"
        # commit() expires the object's attributes (expire_on_commit), so
        # reading one again needs its Session, which teardown removes.
        session.commit()

    assert read_in_time["text"] == "before"
    with pytest.raises(DetachedInstanceError):
        message.text  # noqa: B018


@pytest.mark.parametrize("step", ["step02_session", "step03_teardown"])
def test_in_memory_sqlite_is_a_database_per_connection(step):
    app = import_step(step).create_app({"DATABASE_URL": "sqlite://"})
    assert app.test_cli_runner().invoke(args=["init-db"]).exit_code == 0
    client = app.test_client()

    # sqlite:// gets SingletonThreadPool: a connection per thread, and an
    # in-memory database per connection. init-db's table is in this
    # thread's; another thread's request finds an empty database.
    assert client.post("/messages", json={"text": "here"}).status_code == 201
    elsewhere = run_in_new_thread(lambda: client.get("/messages"))

    assert elsewhere.status_code == 503
    assert "no such table: messages" in elsewhere.get_json()["error"]
    app.extensions["session"].remove()
    dispose_engines(app)


@pytest.mark.parametrize(
    ("connect_args", "elsewhere_sees"),
    [
        ({"check_same_thread": False}, "here"),
        ({}, "objects created in a thread can only be used in that same thread"),
    ],
)
def test_in_memory_sqlite_shared_by_threads_needs_one_static_connection(
    connect_args, elsewhere_sees
):
    options = {"poolclass": StaticPool, "connect_args": connect_args}
    app = import_step("step03_teardown").create_app(
        {"DATABASE_URL": "sqlite://", "ENGINE_OPTIONS": options}
    )
    assert app.test_cli_runner().invoke(args=["init-db"]).exit_code == 0
    client = app.test_client()

    # One connection for every thread, as Flask-SQLAlchemy sets for
    # sqlite://: fine for tests, but every request shares it. Python's
    # sqlite3 refuses a connection made in another thread unless told.
    assert client.post("/messages", json={"text": "here"}).status_code == 201

    def read_elsewhere():
        try:
            return client.get("/messages").get_data(as_text=True)
        except ProgrammingError as error:
            # Raised again by teardown's rollback, on the same connection.
            return str(error)

    assert elsewhere_sees in run_in_new_thread(read_elsewhere)
    dispose_engines(app)


@pytest.mark.parametrize("step", steps_from("step04_pooling"))
def test_from_step_4_on_in_memory_sqlite_is_refused_at_startup(step):
    # step 4's pool limits are QueuePool's, which SingletonThreadPool lacks.
    with pytest.raises(TypeError, match="max_overflow"):
        import_step(step).create_app({"DATABASE_URL": "sqlite://"})
