"""Step 10: Flask-SQLAlchemy 3.1's helpers by hand, against the extension itself.

Each helper runs beside the extension's, on the same rows of the same
database, and gives the same results: every Pagination field over many
cases, the same 404s, the same recorded query fields, the same signal
payloads. Where the two differ, a test says so and shows both. The failing
variants run on step 9, which has none of this.
"""

import importlib.util
import itertools
import os
import subprocess
import sys
import time

import pytest
from flask import Flask
from sqlalchemy import DateTime
from sqlalchemy import FetchedValue
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import NoInspectionAvailable
from werkzeug.exceptions import NotFound

from testbed import ROOT
from testbed.step_apps import close_app
from testbed.step_apps import initialize_databases

from .steps import import_step

flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")

STEP = "step10_helpers"
BEFORE = "step09_app_context"
helpers = pytest.importorskip(f"{STEP}.helpers")

# More rows than one page of 150 holds, for max_per_page's cases.
ROWS = 163


def flask_sqlalchemy_app(databases, **config):
    """Return a Flask-SQLAlchemy 3.1 app, its db and its two models, on the
    tables init-db made."""
    app = Flask("tests.flask_sqlalchemy_app")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=databases["DATABASE_URL"],
        SQLALCHEMY_BINDS={"audit": databases["AUDIT_DATABASE_URL"]},
        **config,
    )
    db = flask_sqlalchemy.SQLAlchemy(app)

    class Message(db.Model):
        __tablename__ = "messages"
        id = db.Column(Integer, primary_key=True)
        text = db.Column(String(500), nullable=False)
        created_at = db.Column(DateTime, server_default=FetchedValue())

    class AuditEntry(db.Model):
        __bind_key__ = "audit"
        __tablename__ = "audit_log"
        id = db.Column(Integer, primary_key=True)
        action = db.Column(String(10), nullable=False)
        message_id = db.Column(Integer, nullable=False)
        text = db.Column(String(500))
        at = db.Column(DateTime, server_default=FetchedValue())

    return app, db, Message, AuditEntry


@pytest.fixture
def both(make_app, databases_for):
    """Step 10's app and Flask-SQLAlchemy's, on the same databases, with
    ROWS messages in them."""
    ours = make_app(STEP, RECORD_QUERIES=True)
    theirs = flask_sqlalchemy_app(databases_for(STEP), SQLALCHEMY_RECORD_QUERIES=True)
    engine = ours.extensions["engine"]
    with engine.begin() as connection:
        connection.execute(
            insert(ours.extensions["models"].get().Message.__table__),
            [{"text": f"message {number}"} for number in range(ROWS)],
        )
    yield ours, theirs
    with theirs[0].app_context():
        theirs[1].engine.dispose()
        theirs[1].engines["audit"].dispose()


def outcome(paginate, by_id, page, per_page, max_per_page, error_out, count):
    """Return every field of a pagination, or "404"."""
    try:
        pagination = paginate(
            by_id,
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )
    except NotFound:
        return "404"
    fields = {
        name: getattr(pagination, name)
        for name in (
            "page",
            "per_page",
            "max_per_page",
            "total",
            "pages",
            "first",
            "last",
            "has_prev",
            "has_next",
            "prev_num",
            "next_num",
        )
    }
    fields["items"] = [message.id for message in pagination]
    fields["iter_pages"] = list(pagination.iter_pages())
    following = pagination.next()
    fields["next"] = ([m.id for m in following.items], following.page, following.total)
    # prev() caps the page at max_per_page here, at 100 in the extension:
    # the test on prev() below shows both.
    if min(pagination.per_page, max_per_page or ROWS) == min(pagination.per_page, 100):
        previous = pagination.prev()
        fields["prev"] = ([m.id for m in previous.items], previous.page)
    return fields


QUERY_STRINGS = [
    "",
    "?page=2&per_page=5",
    "?page=x",
    "?per_page=y",
    "?page=0",
    "?per_page=-4",
    "?page=99",
    "?page=3&per_page=150",
]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("query_string", QUERY_STRINGS)
def test_paginate_gives_every_field_flask_sqlalchemy_gives(both, query_string):
    ours, (theirs, db, Message, _) = both
    cases = list(
        itertools.product(
            [None, 1, 3, 12, 0, -1],  # page
            [None, 7, 150, 0],  # per_page
            [None, 10],  # max_per_page
            [True, False],  # error_out
            [True, False],  # count
        )
    )
    OurMessage = ours.extensions["models"].get().Message
    with ours.test_request_context(f"/messages{query_string}"):
        our_outcomes = [
            outcome(helpers.paginate, select(OurMessage).order_by(OurMessage.id), *c)
            for c in cases
        ]
    with theirs.test_request_context(f"/messages{query_string}"):
        their_outcomes = [
            outcome(db.paginate, select(Message).order_by(Message.id), *case)
            for case in cases
        ]

    assert our_outcomes == their_outcomes
    # The cases reach every rule: pages found, 404s, and the defaults.
    assert "404" in our_outcomes
    assert any(o != "404" and o["pages"] > 1 for o in our_outcomes)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_paginate_outside_a_request_reads_page_1_of_20(both):
    ours, (theirs, db, Message, _) = both
    OurMessage = ours.extensions["models"].get().Message
    with ours.app_context():
        page = helpers.paginate(select(OurMessage).order_by(OurMessage.id))
        ours_seen = (page.page, page.per_page, [m.id for m in page])
    with theirs.app_context():
        page = db.paginate(select(Message).order_by(Message.id))
        theirs_seen = (page.page, page.per_page, [m.id for m in page])

    assert ours_seen == theirs_seen == (1, 20, list(range(1, 21)))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_paginate_caps_per_page_only_when_told_though_its_docstring_says_100(both):
    # db.paginate's docstring says max_per_page "defaults to 100"; its
    # signature says None, which is no limit. The helper keeps the behaviour.
    ours, (theirs, db, Message, _) = both
    OurMessage = ours.extensions["models"].get().Message
    with ours.test_request_context("/?per_page=150"):
        assert len(helpers.paginate(select(OurMessage)).items) == 150
    with theirs.test_request_context("/?per_page=150"):
        assert len(db.paginate(select(Message)).items) == 150
        assert "Defaults to 100" in db.paginate.__doc__


@pytest.mark.parametrize("backend", ["sqlite"])
def test_without_error_out_a_per_page_below_1_becomes_20_even_over_the_cap(both):
    ours, (theirs, db, Message, _) = both
    OurMessage = ours.extensions["models"].get().Message
    arguments = {"per_page": 0, "max_per_page": 10, "error_out": False}
    with ours.app_context():
        assert len(helpers.paginate(select(OurMessage), **arguments).items) == 20
    with theirs.app_context():
        assert len(db.paginate(select(Message), **arguments).items) == 20


@pytest.mark.parametrize("backend", ["sqlite"])
def test_prev_keeps_max_per_page_as_next_does_where_the_extensions_drops_it(both):
    ours, (theirs, db, Message, _) = both
    OurMessage = ours.extensions["models"].get().Message
    with ours.app_context():
        page = helpers.paginate(
            select(OurMessage), page=2, per_page=150, max_per_page=200
        )
        assert (page.prev().per_page, page.next().per_page) == (150, 150)
    with theirs.app_context():
        page = db.paginate(select(Message), page=2, per_page=150, max_per_page=200)
        # The extension's prev() passes no max_per_page, so its default of
        # 100 applies: the page before a page of 150 holds 100.
        assert (page.prev().per_page, page.next().per_page) == (100, 150)


def bare_pagination(pagination_class, page, pages):
    """Return a pagination of ``pages`` pages of ten, on ``page``, without a
    query: iter_pages() reads only page and pages."""
    pagination = object.__new__(pagination_class)
    pagination.page, pagination.per_page, pagination.total = page, 10, pages * 10
    pagination.items = []
    return pagination


def test_iter_pages_yields_the_extensions_numbers_and_gaps():
    edges = [0, 1, 2, 4]
    cases = [
        (pages, page, *widths)
        for pages in (0, 1, 2, 5, 9, 20, 31)
        for page in range(1, max(pages, 1) + 1)
        for widths in itertools.product(edges, repeat=4)
    ]
    names = ("left_edge", "left_current", "right_current", "right_edge")

    def all_pages(pagination_class):
        return [
            list(
                bare_pagination(pagination_class, page, pages).iter_pages(
                    **dict(zip(names, widths, strict=True))
                )
            )
            for pages, page, *widths in cases
        ]

    assert all_pages(helpers.Pagination) == all_pages(
        flask_sqlalchemy.pagination.Pagination
    )
    # The docstring's example: 20 pages, on page 7.
    assert list(bare_pagination(helpers.Pagination, 7, 20).iter_pages()) == [
        1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 19, 20,
    ]  # fmt: skip


def not_found_or(call):
    """Return the call's result's id, or the 404's description."""
    try:
        return call().id
    except NotFound as error:
        return f"404: {error.description}"


def test_the_or_404_helpers_find_and_refuse_as_the_extensions_do(both):
    ours, (theirs, db, Message, _) = both
    OurMessage = ours.extensions["models"].get().Message

    def calls(get_or_404, first_or_404, one_or_404, model):
        return [
            lambda: get_or_404(model, 7),
            lambda: get_or_404(model, ROWS + 1),
            lambda: get_or_404(model, ROWS + 1, description="no such message"),
            lambda: first_or_404(select(model).where(model.id > 100)),
            lambda: first_or_404(select(model).where(model.id < 0)),
            lambda: one_or_404(select(model).where(model.id == 9)),
            lambda: one_or_404(select(model).where(model.id > 9)),
            lambda: one_or_404(select(model).where(model.id < 0), description="none"),
        ]

    with ours.app_context():
        our_results = [
            not_found_or(call)
            for call in calls(
                helpers.get_or_404, helpers.first_or_404, helpers.one_or_404, OurMessage
            )
        ]
    with theirs.app_context():
        their_results = [
            not_found_or(call)
            for call in calls(db.get_or_404, db.first_or_404, db.one_or_404, Message)
        ]

    assert our_results == their_results
    not_found = f"404: {NotFound.description}"
    assert our_results[:3] == [7, not_found, "404: no such message"]
    assert our_results[5:7] == [9, not_found]


def test_recorded_queries_have_the_extensions_fields_and_the_views_location(both):
    ours, (theirs, db, Message, _) = both

    @theirs.get("/messages")
    def list_messages():
        pagination = db.paginate(select(Message).order_by(Message.id), max_per_page=100)
        return [message.id for message in pagination]

    recorded = {}
    for name, app, module in [
        ("ours", ours, helpers),
        ("theirs", theirs, flask_sqlalchemy.record_queries),
    ]:
        with app.test_request_context("/messages?page=2&per_page=5"):
            response = app.full_dispatch_request()
            assert response.status_code == 200
            recorded[name] = module.get_recorded_queries()

    ours_seen, theirs_seen = recorded["ours"], recorded["theirs"]
    # The page, then the count: the same statements, the same parameters.
    assert [(q.statement, q.parameters) for q in ours_seen] == [
        (q.statement, q.parameters) for q in theirs_seen
    ]
    assert len(ours_seen) == 2
    for query in ours_seen:
        assert 0 <= query.duration == query.end_time - query.start_time
    # The location is the app's code that ran the query: the view, not the
    # helper that paginated for it.
    views = str(ROOT / STEP / "views.py")
    assert all(
        q.location.startswith(f"{views}:") and q.location.endswith("(list_messages)")
        for q in ours_seen
    ), [q.location for q in ours_seen]
    assert all(q.location.endswith("(list_messages)") for q in theirs_seen)


# An app whose code lives in the module its import name names: a single
# app.py, or a package's __init__.py. Both apps, step 10's and the
# extension's, run the same query from a view there.
APP_IN_ITS_OWN_MODULE = """\
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import select

from step10_helpers import db
from step10_helpers import helpers


def create_step_10_app(config):
    app = Flask(__name__)
    app.config.update(config)
    db.init_app(app)
    helpers.init_app(app)

    @app.get("/one")
    def one():
        return str(db.get_session().scalar(select(1)))  # step 10 runs it here

    return app


def create_flask_sqlalchemy_app(config):
    app = Flask(__name__)
    app.config.update(config)
    extension = SQLAlchemy(app)

    @app.get("/one")
    def one():
        return str(extension.session.scalar(select(1)))  # the extension runs it here

    return app
"""


def import_app_module(path, name, monkeypatch):
    """Import a module or package (its ``__init__.py``) from a file of its own,
    under a top-level name, for the test's duration."""
    package_folder = [str(path.parent)] if path.name == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=package_folder
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "module_path", ["app_in_one_module.py", "app_package/__init__.py"]
)
def test_a_query_in_the_import_names_own_module_is_located_as_the_extension_does(
    module_path, databases_for, tmp_path, monkeypatch
):
    path = tmp_path / module_path
    path.parent.mkdir(exist_ok=True)
    path.write_text(APP_IN_ITS_OWN_MODULE)
    name = module_path.partition("/")[0].removesuffix(".py")
    module = import_app_module(path, name, monkeypatch)
    databases = databases_for(STEP)
    ours = module.create_step_10_app(
        {
            **databases,
            "ENGINE_OPTIONS": {},
            "BEHIND_POOLER": False,
            "RECORD_QUERIES": True,
        }
    )
    theirs = module.create_flask_sqlalchemy_app(
        {
            "SQLALCHEMY_DATABASE_URI": databases["DATABASE_URL"],
            "SQLALCHEMY_RECORD_QUERIES": True,
        }
    )
    lines = APP_IN_ITS_OWN_MODULE.splitlines()
    found, expected = {}, {}
    try:
        for who, app, module_of_queries, comment in [
            ("ours", ours, helpers, "# step 10 runs it here"),
            ("theirs", theirs, flask_sqlalchemy.record_queries, "# the extension"),
        ]:
            with app.test_request_context("/one"):
                assert app.full_dispatch_request().get_data(as_text=True) == "1"
                (query,) = module_of_queries.get_recorded_queries()
            line = next(n for n, text in enumerate(lines, 1) if comment in text)
            found[who], expected[who] = query.location, f"{path}:{line} (one)"
    finally:
        close_app(ours)
        with theirs.app_context():
            theirs.extensions["sqlalchemy"].engine.dispose()

    # Both name the view's line in the app's own module: step 10 said
    # "<unknown>" when it looked only in modules under "<import name>.".
    assert found == expected


def test_without_record_queries_nothing_is_recorded(make_app):
    app = make_app(STEP)
    with app.test_request_context("/messages?page=1"):
        assert app.full_dispatch_request().status_code == 200
        assert helpers.get_recorded_queries() == []


# A statement that takes 50 ms on the database's side, on each backend:
# SQLite's is a function of the test's own, on the request's connection.
SLEEP_50_MS = {"sqlite": "SELECT sleep_ms(50)", "postgresql": "SELECT pg_sleep(0.05)"}


def test_a_recorded_querys_times_are_those_of_its_run(make_app, backend):
    app = make_app(STEP, RECORD_QUERIES=True)
    with app.app_context():
        session = app.extensions["session"]()
        if backend == "sqlite":
            session.connection().connection.driver_connection.create_function(
                "sleep_ms", 1, lambda ms: time.sleep(ms / 1000)
            )
        started = time.perf_counter()
        session.execute(text(SLEEP_50_MS[backend]))
        ended = time.perf_counter()
        [query] = helpers.get_recorded_queries()

    assert query.statement == SLEEP_50_MS[backend]
    # The query's own clock readings, inside the caller's, 50 ms or more apart.
    assert started <= query.start_time < query.end_time <= ended
    assert 0.05 <= query.duration <= ended - started


def test_the_queries_of_both_databases_are_recorded(make_app):
    app = make_app(STEP, RECORD_QUERIES=True)
    with app.test_request_context("/messages", method="POST", json={"text": "hi"}):
        assert app.full_dispatch_request().status_code == 201
        inserts = [
            query.statement.split("(")[0].strip()
            for query in helpers.get_recorded_queries()
            if query.statement.startswith("INSERT")
        ]

    # The message in the messages database, its entry in the audit one.
    assert inserts == ["INSERT INTO messages", "INSERT INTO audit_log"]


def committed(signal, app):
    """Connect to a signal for the app; return the list its payloads go to,
    each as (table, id, operation)."""
    payloads = []

    def receive(sender, changes):
        assert sender is app
        payloads.append([(type(row).__tablename__, row.id, op) for row, op in changes])

    signal.connect(receive, app, weak=False)
    return payloads


def test_the_apis_writes_send_the_signals_the_extension_sends_for_the_same_writes(
    make_app, new_database
):
    ours = make_app(STEP)
    # The extension on databases of its own, so that its ids are ours.
    their_databases = {
        "DATABASE_URL": new_database("theirs"),
        "AUDIT_DATABASE_URL": new_database("theirs_audit"),
    }
    initialize_databases(import_step(STEP).create_app, their_databases)
    theirs, db, Message, AuditEntry = flask_sqlalchemy_app(
        their_databases, SQLALCHEMY_TRACK_MODIFICATIONS=True
    )
    payloads = {
        (name, signal): committed(getattr(module, signal), app)
        for name, app, module in [
            ("ours", ours, helpers),
            ("theirs", theirs, flask_sqlalchemy.track_modifications),
        ]
        for signal in ("before_models_committed", "models_committed")
    }
    try:
        client = ours.test_client()
        assert client.post("/messages", json={"text": "hello"}).status_code == 201
        assert client.patch("/messages/1", json={"text": "edited"}).status_code == 200
        assert client.delete("/messages/1").status_code == 204

        # The same writes, as a Flask-SQLAlchemy app would make them.
        with theirs.app_context():
            message = Message(text="hello")
            db.session.add(message)
            db.session.flush()
            db.session.add(AuditEntry(action="create", message_id=1, text="hello"))
            db.session.commit()
            message = db.get_or_404(Message, 1)
            message.text = "edited"
            db.session.flush()
            db.session.add(AuditEntry(action="update", message_id=1, text="edited"))
            db.session.commit()
            db.session.delete(db.get_or_404(Message, 1))
            db.session.flush()
            db.session.add(AuditEntry(action="delete", message_id=1))
            db.session.commit()
    finally:
        with theirs.app_context():
            for engine in db.engines.values():
                engine.dispose()

    for signal in ("before_models_committed", "models_committed"):
        assert payloads["ours", signal] == payloads["theirs", signal]
    assert payloads["ours", "models_committed"] == [
        [("messages", 1, "insert"), ("audit_log", 1, "insert")],
        [("messages", 1, "update"), ("audit_log", 2, "insert")],
        [("messages", 1, "delete"), ("audit_log", 3, "insert")],
    ]


def test_a_write_that_fails_sends_no_signal(make_app):
    app = make_app(STEP)
    sent = committed(helpers.models_committed, app)
    client = app.test_client()
    assert client.post("/messages", json={"text": "kept"}).status_code == 201
    assert client.patch("/messages/2", json={"text": "none"}).status_code == 404
    assert client.delete("/messages/2").status_code == 404

    assert sent == [[("messages", 1, "insert"), ("audit_log", 1, "insert")]]


def test_a_commit_the_database_refuses_sends_no_models_committed_as_the_extensions(
    make_app, databases_for
):
    ours = make_app(STEP)
    theirs, db, TheirMessage, _ = flask_sqlalchemy_app(
        databases_for(STEP), SQLALCHEMY_TRACK_MODIFICATIONS=True
    )
    Message = ours.extensions["models"].get().Message
    payloads = {
        (name, signal): committed(getattr(module, signal), app)
        for name, app, module in [
            ("ours", ours, helpers),
            ("theirs", theirs, flask_sqlalchemy.track_modifications),
        ]
        for signal in ("before_models_committed", "models_committed")
    }
    with ours.app_context():
        session = ours.extensions["session"]()
        session.add(Message(text="first"))
        session.commit()
        # The primary key is taken: the database refuses the commit's INSERT.
        session.add(Message(id=1, text="again"))
        with pytest.raises(IntegrityError):
            session.commit()
    try:
        with theirs.app_context():
            db.session.add(TheirMessage(id=1, text="again"))
            with pytest.raises(IntegrityError):
                db.session.commit()
    finally:
        with theirs.app_context():
            for engine in db.engines.values():
                engine.dispose()

    # Before the commit, both announce the insert the database then refused;
    # after it, neither says anything was committed.
    assert payloads["ours", "before_models_committed"][1:] == [
        [("messages", 1, "insert")]
    ]
    assert payloads["theirs", "before_models_committed"] == [
        [("messages", 1, "insert")]
    ]
    assert payloads["ours", "models_committed"] == [[("messages", 1, "insert")]]
    assert payloads["theirs", "models_committed"] == []


def test_models_committed_goes_out_once_other_connections_see_the_commit(make_app):
    app = make_app(STEP)
    engine = app.extensions["engine"]
    seen_elsewhere = {}

    def read_from_another_connection(signal_name):
        def receive(sender, changes):
            with engine.connect() as connection:
                seen_elsewhere[signal_name] = (
                    connection.execute(text("SELECT text FROM messages"))
                    .scalars()
                    .all()
                )

        return receive

    helpers.before_models_committed.connect(
        read_from_another_connection("before"), app, weak=False
    )
    helpers.models_committed.connect(
        read_from_another_connection("after"), app, weak=False
    )

    assert app.test_client().post("/messages", json={"text": "hi"}).status_code == 201

    assert seen_elsewhere == {"before": [], "after": ["hi"]}


def test_a_commit_outside_an_app_context_sends_nothing_and_raises_nothing(make_app):
    # A script or a job that makes a Session of the app's factory, with no
    # app context: the signals name an app, and there is none to name.
    app = make_app(STEP)
    sent = committed(helpers.models_committed, app)
    before = committed(helpers.before_models_committed, app)
    Message = app.extensions["models"].get().Message

    with app.extensions["session"].session_factory() as session:
        session.add(Message(text="from a job"))
        session.commit()

    assert (sent, before) == ([], [])
    client = app.test_client()
    assert [m["text"] for m in client.get("/messages").get_json()] == ["from a job"]


@pytest.mark.parametrize("step", [STEP, BEFORE])
def test_the_api_pages_on_step_10_and_lists_everything_on_step_9(step, make_app):
    app = make_app(step)
    client = app.test_client()
    for number in range(45):
        client.post("/messages", json={"text": f"message {number}"})

    response = client.get("/messages?page=2&per_page=10")
    whole = client.get("/messages")

    assert response.status_code == whole.status_code == 200
    assert len(whole.get_json()) == 45
    if step == BEFORE:
        assert len(response.get_json()) == 45
        assert "Link" not in response.headers
        return
    assert [m["id"] for m in response.get_json()] == list(range(11, 21))
    assert response.headers["X-Total-Count"] == "45"
    assert response.headers["Link"] == (
        '</messages?page=1&per_page=10>; rel="first", '
        '</messages?page=1&per_page=10>; rel="prev", '
        '</messages?page=3&per_page=10>; rel="next", '
        '</messages?page=5&per_page=10>; rel="last"'
    )
    # However many a client asks for, a page holds at most 100.
    assert len(client.get("/messages?page=1&per_page=1000").get_json()) == 45
    assert (
        client.get("/messages?page=1&per_page=1000")
        .headers["Link"]
        .endswith('</messages?page=1&per_page=100>; rel="last"')
    )


def links_of(response):
    """Return a Link header's targets by relation."""
    return {
        relation.partition('rel="')[2].rstrip('"'): target.strip(" <>")
        for target, _, relation in (
            link.partition(";") for link in response.headers["Link"].split(",")
        )
    }


@pytest.mark.parametrize("messages", [0, 1, 45])
def test_every_page_the_link_header_names_answers(make_app, messages):
    client = make_app(STEP).test_client()
    for number in range(messages):
        client.post("/messages", json={"text": f"message {number}"})

    response = client.get("/messages?page=1&per_page=10")

    assert response.headers["X-Total-Count"] == str(messages)
    links = links_of(response)
    # An empty list still has a first page, and it is the last one too.
    assert links["first"] == "/messages?page=1&per_page=10"
    assert links["last"] == f"/messages?page={max(1, -(-messages // 10))}&per_page=10"
    for target in links.values():
        assert client.get(target).status_code == 200, target


@pytest.mark.parametrize(
    ("query_string", "error"),
    [
        ("?page=x", "page must be a whole number, not 'x'"),
        ("?per_page=2.5", "per_page must be a whole number, not '2.5'"),
        ("?page=0", "page must be 1 or more, not 0"),
        ("?page=1&per_page=-1", "per_page must be 1 or more, not -1"),
        ("?page=3&per_page=10", "page 3 has no items"),
    ],
)
def test_a_bad_page_is_a_json_404_that_says_why(make_app, query_string, error):
    client = make_app(STEP).test_client()
    for number in range(12):
        client.post("/messages", json={"text": f"message {number}"})

    response = client.get(f"/messages{query_string}")

    assert (response.status_code, response.get_json()) == (404, {"error": error})


def test_the_page_links_its_pages_from_iter_pages(make_app):
    client = make_app(STEP).test_client()
    for number in range(205):
        client.post("/messages", json={"text": f"message {number}"})

    page = client.get("/?page=7").get_data(as_text=True)

    start = page.index('<nav id="pages"')
    navigation = page[start : page.index("</nav>", start)]
    assert "Messages 121 to 140 of 205:" in navigation
    # 11 pages, on page 7: 1 2 … 5 6 [7] 8 9 10 11.
    assert [
        link.partition('">')[2].partition("<")[0]
        for link in navigation.split('<a href="/?page=')[1:]
    ] == ["previous", "1", "2", "5", "6", "8", "9", "10", "11", "next"]
    assert '<li aria-current="page">7</li>' in navigation
    assert navigation.count("<li>…</li>") == 1
    assert "message 120</li>" in page
    assert "message 119</li>" not in page


SHELL_SCRIPT = """\
print(sorted({"session", "Message", "AuditEntry"} & set(dir())))
print(session.scalars(select(Message.text)).all())
"""


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("step", [STEP, BEFORE])
def test_flask_shell_opens_with_the_session_and_the_models(step, make_app):
    app = make_app(step)
    app.test_client().post("/messages", json={"text": "from the API"})
    environment = {
        **os.environ,
        "DATABASE_URL": app.config["DATABASE_URL"],
        "AUDIT_DATABASE_URL": app.config["AUDIT_DATABASE_URL"],
    }

    shell = subprocess.run(
        [sys.executable, "-m", "flask", "--app", step, "shell"],
        input="from sqlalchemy import select\n" + SHELL_SCRIPT,
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=60,
    )

    if step == BEFORE:
        assert "[]" in shell.stdout
        assert "NameError: name 'session' is not defined" in shell.stderr
        return
    assert "['AuditEntry', 'Message', 'session']" in shell.stdout, shell.stderr
    assert "['from the API']" in shell.stdout


def test_a_rolled_back_write_is_not_in_the_next_commits_signal(make_app):
    app = make_app(STEP)
    sent = committed(helpers.models_committed, app)
    Message = app.extensions["models"].get().Message
    with app.app_context():
        session = app.extensions["session"]()
        session.add(Message(text="rolled back"))
        session.flush()
        session.rollback()
        session.add(Message(text="committed"))
        session.commit()

    assert [[operation for _, _, operation in changes] for changes in sent] == [
        ["insert"]
    ]


def test_making_a_session_sqlalchemy_fails_to_inspect_each_of_its_binds(make_app):
    # What the benchmark finds step 10's Session costs to make: its binds
    # name the two databases' declarative bases, which map no table, so
    # Session._add_bind's inspect() raises for each, and catches it.
    factory = make_app(STEP).extensions["session"].session_factory
    failed = []

    def trace(frame, event, argument):
        if event == "exception" and argument[0] is NoInspectionAvailable:
            failed.append(frame.f_code.co_name)
        return trace

    sys.settrace(trace)
    try:
        factory().close()
    finally:
        sys.settrace(None)

    assert failed.count("_add_bind") == len(factory.kw["binds"]) == 2
