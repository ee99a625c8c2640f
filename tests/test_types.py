"""What a type checker says of the steps, and of Flask-SQLAlchemy's db.Model.

mypy --strict checks every step package, as ``make lint`` runs it, so that
a reader's editor knows what ``create_app()``, ``db.get_session()`` and
``db.get_models().Message`` are. Then the snippets a reader writes: a
model made with a misspelt keyword, and with a number for its text, on a
step's declared model (step 4), a step's reflected one (step 10), and
Flask-SQLAlchemy 3.1's ``db.Model``. mypy's report on each is asserted line
by line, whichever way it falls, and what the same calls do at run time
beside it. docs/comparison.md ("What a type checker says") cites them.
"""

import importlib.metadata
import importlib.util
import shlex
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import select
from sqlalchemy import text

from testbed import ROOT

from .steps import STEPS
from .steps import import_step
from .steps import message_class

# The cache make lint fills too: pyproject.toml's [tool.mypy] keeps it a
# file per module, so that test workers and make lint share it safely. On a
# warm cache, mypy checks only what changed.
CACHE = ROOT / ".mypy_cache"


def run_mypy(*arguments):
    """Run mypy from the repository root, where the step packages are found;
    return its report, one line a message, and its exit status."""
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(CACHE), *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert checked.stderr == ""
    return checked.stdout.splitlines(), checked.returncode


def lint_mypy_arguments():
    """Return the arguments make lint gives mypy, as Make expands them."""
    dry_run = subprocess.run(
        ["make", "--dry-run", "lint"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    [command] = [line for line in dry_run.stdout.splitlines() if "/mypy " in line]
    return shlex.split(command)[1:]


# Checked as the steps are: the AsyncSession example, beside them.
EXAMPLES = ["async_session"]


def test_make_lint_runs_mypy_strict_on_every_step_package_and_it_passes():
    arguments = lint_mypy_arguments()
    files = [
        path
        for step in STEPS + EXAMPLES
        for path in (ROOT / step).rglob("*.py")
        if "__pycache__" not in path.parts
    ]

    report, status = run_mypy(*arguments)

    assert arguments[0] == "--strict"
    # A glob, so that a new step is checked by existing.
    assert sorted(argument.rstrip("/") for argument in arguments[1:]) == sorted(
        STEPS + EXAMPLES
    )
    # Every file of every step: its tests' and helpers' modules too.
    assert report == [f"Success: no issues found in {len(files)} source files"]
    assert status == 0


# What a reader writes, and what mypy --strict says of each line: the
# messages mypy prints, without the file's name. The constructor snippets
# make a model with a misspelt keyword, misspelt(), and with a number for
# its text, a_number(): the tests below call them, to see what runs.
SNIPPETS = {
    "declared_model": (
        """
        from step04_pooling.models import Message


        def misspelt() -> None:
            Message(txt="hi")


        def a_number() -> None:
            Message(text=1)
        """,
        # DeclarativeBase types its constructor **kw: Any: any keyword, of
        # any type, passes.
        [],
    ),
    "reflected_model": (
        """
        from step10_helpers import db


        def misspelt() -> None:
            db.get_models().Message(txt="hi")


        def a_number() -> None:
            db.get_models().Message(text=1)
        """,
        # Its class is MessageModel (below), whose constructor is typed as
        # DeclarativeBase's.
        [],
    ),
    "flask_sqlalchemy_model": (
        """
        from flask_sqlalchemy import SQLAlchemy
        from sqlalchemy.orm import Mapped
        from sqlalchemy.orm import mapped_column

        db = SQLAlchemy()


        class Message(db.Model):
            id: Mapped[int] = mapped_column(primary_key=True)
            text: Mapped[str]


        def misspelt() -> None:
            Message(txt="hi")


        def a_number() -> None:
            Message(text=1)
        """,
        # db.Model is an attribute set in SQLAlchemy.__init__, of type
        # type[_FSAModel]: no class to a checker. The model's base is then
        # Any, and its constructor takes anything.
        [
            '8: error: Name "db.Model" is not defined  [name-defined]',
            '8: error: Class cannot subclass "Model" (has type "Any")  [misc]',
        ],
    ),
    "flask_sqlalchemy_model_class": (
        """
        from flask_sqlalchemy import SQLAlchemy
        from sqlalchemy.orm import DeclarativeBase
        from sqlalchemy.orm import Mapped
        from sqlalchemy.orm import mapped_column


        class Base(DeclarativeBase):
            pass


        db = SQLAlchemy(model_class=Base)


        class Message(db.Model):
            id: Mapped[int] = mapped_column(primary_key=True)
            text: Mapped[str]


        def misspelt() -> None:
            Message(txt="hi")


        def a_number() -> None:
            Message(text=1)
        """,
        # The extension's documented 2.x-style base changes nothing here.
        [
            '14: error: Name "db.Model" is not defined  [name-defined]',
            '14: error: Class cannot subclass "Model" (has type "Any")  [misc]',
        ],
    ),
    "dataclass_model": (
        """
        from datetime import UTC
        from datetime import datetime

        from sqlalchemy import DateTime
        from sqlalchemy import String
        from sqlalchemy.orm import DeclarativeBase
        from sqlalchemy.orm import Mapped
        from sqlalchemy.orm import MappedAsDataclass
        from sqlalchemy.orm import mapped_column


        def utc_now() -> datetime:
            return datetime.now(UTC)


        class Base(MappedAsDataclass, DeclarativeBase):
            pass


        # Step 4's model as a dataclass: what the constructor does not take
        # says init=False, and the default becomes an insert default.
        class Message(Base):
            __tablename__ = "messages"

            id: Mapped[int] = mapped_column(primary_key=True, init=False)
            text: Mapped[str] = mapped_column(String(500))
            created_at: Mapped[datetime] = mapped_column(
                DateTime(timezone=True), insert_default=utc_now, init=False
            )


        def misspelt() -> None:
            Message(txt="hi")


        def a_number() -> None:
            Message(text=1)
        """,
        # A generated __init__ (PEP 681): the checker knows its keywords.
        [
            '33: error: Unexpected keyword argument "txt" for "Message";'
            ' did you mean "text"?  [call-arg]',
            '37: error: Argument "text" to "Message" has incompatible type "int";'
            ' expected "SQLCoreOperations[str] | str"  [arg-type]',
        ],
    ),
    "what_an_editor_knows": (
        """
        from step04_pooling import create_app
        from step10_helpers import db
        from step10_helpers import helpers

        reveal_type(create_app)
        reveal_type(db.get_session())
        reveal_type(db.get_models().Message)
        reveal_type(db.get_models().Message.text)
        reveal_type(helpers.get_or_404(db.get_models().Message, 1))
        """,
        [
            '5: note: Revealed type is "def (test_config: typing.Mapping[str, Any]'
            ' | None =) -> flask.app.Flask"',
            '6: note: Revealed type is "sqlalchemy.orm.session.Session"',
            '7: note: Revealed type is "type[step10_helpers.models.MessageModel]"',
            "8: note: Revealed type is"
            ' "sqlalchemy.orm.attributes.InstrumentedAttribute[str]"',
            '9: note: Revealed type is "step10_helpers.models.MessageModel"',
        ],
    ),
}


def snippet_source(name):
    """Return a snippet's code, as a reader's file holds it."""
    return textwrap.dedent(SNIPPETS[name][0]).lstrip()


@pytest.fixture(scope="module")
def mypy_reports(tmp_path_factory):
    """Check every snippet in one run of mypy --strict; return each one's
    report, by name, and the run's exit status."""
    folder = tmp_path_factory.mktemp("snippets")
    for name in SNIPPETS:
        (folder / f"{name}.py").write_text(snippet_source(name))

    report, status = run_mypy(
        "--strict", "--no-error-summary", *sorted(map(str, folder.glob("*.py")))
    )

    reports = {name: [] for name in SNIPPETS}
    for line in report:
        path, _, message = line.partition(":")
        # A snippet by its file's name: mypy may name the folder of an
        # earlier run, whose report it kept in its cache. A step's module,
        # if one failed, by its path.
        name = path.rpartition("/")[2].removesuffix(".py")
        reports.setdefault(name if name in SNIPPETS else path, []).append(message)
    return reports, status


@pytest.mark.parametrize("name", SNIPPETS)
def test_what_mypy_says_of_each_snippet(name, mypy_reports):
    reports, status = mypy_reports

    assert reports[name] == SNIPPETS[name][1]
    # Two snippets' errors fail the run.
    assert status == 1


def test_the_checked_extension_is_flask_sqlalchemy_3_1():
    # What docs/comparison.md says of db.Model is said of this version.
    assert importlib.metadata.version("flask-sqlalchemy").startswith("3.1.")


# At run time: what the snippets the checker let by do.


def import_snippet(name, tmp_path):
    """Import a snippet as a module of its own."""
    path = tmp_path / f"{name}.py"
    path.write_text(snippet_source(name))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("step", "snippet"),
    [("step04_pooling", "declared_model"), ("step10_helpers", "reflected_model")],
)
def test_a_misspelt_keyword_fails_only_when_the_model_is_made(
    step, snippet, make_app, tmp_path
):
    app = make_app(step)
    made = import_snippet(snippet, tmp_path)

    with app.app_context():
        with pytest.raises(TypeError) as raised:
            made.misspelt()
        made.a_number()

    assert str(raised.value) == "'txt' is an invalid keyword argument for Message"


@pytest.mark.parametrize("step", ["step04_pooling", "step10_helpers"])
def test_a_number_for_the_text_is_written_as_the_string_the_database_makes_of_it(
    step, make_app
):
    app = make_app(step)

    with app.app_context():
        session = import_step(f"{step}.db").get_session()
        Message = message_class(app)
        session.add(Message(text=1))
        session.commit()
        stored = session.execute(text("SELECT text FROM messages")).scalar_one()
        read_back = session.scalars(select(Message)).one().text

    # SQLite's TEXT affinity converts it; SQLAlchemy's psycopg dialect casts
    # the parameter to VARCHAR. Neither refuses it.
    assert stored == read_back == "1"


@pytest.mark.parametrize(
    ("snippet", "refused"),
    [
        ("flask_sqlalchemy_model", "'txt' is an invalid keyword argument for Message"),
        ("dataclass_model", "__init__() got an unexpected keyword argument 'txt'"),
    ],
)
def test_other_models_refuse_a_misspelt_keyword_and_take_a_number(
    snippet, refused, tmp_path
):
    made = import_snippet(snippet, tmp_path)

    with pytest.raises(TypeError) as raised:
        made.misspelt()
    made.a_number()

    assert str(raised.value) == refused


def test_as_a_dataclass_step_4s_model_would_compare_and_hash_otherwise(tmp_path):
    dataclass_message = import_snippet("dataclass_model", tmp_path).Message
    declared_message = import_step("step04_pooling.models").Message

    # The dataclass takes the text by position too; the steps' constructor
    # takes keywords only.
    assert dataclass_message("hi").text == "hi"
    with pytest.raises(TypeError):
        declared_message("hi")
    # Two messages of the same text are equal, and no message is hashable:
    # a set of messages, or a dict keyed by them, fails.
    assert dataclass_message(text="hi") == dataclass_message(text="hi")
    with pytest.raises(TypeError, match="unhashable type: 'Message'"):
        hash(dataclass_message(text="hi"))
    assert declared_message(text="hi") != declared_message(text="hi")
    assert len({declared_message(text="hi"), declared_message(text="hi")}) == 2
