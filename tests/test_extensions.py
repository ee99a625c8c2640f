"""What the README says Flask-SQLAlchemy and Flask-SQLAlchemy-Lite do, checked.

"Do you need Flask-SQLAlchemy?" compares this repository with the two
extensions; each claim it makes about them is asserted here, against the
versions the project installs for its benchmark.
"""

import gc
import inspect

import pytest
from flask import Flask
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from testbed.fork import in_forked_child
from testbed.mariadb import HOW_TO_GET_MARIADB
from testbed.threads import run_in_new_thread

from .conftest import skip_or_fail

flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
record_queries = pytest.importorskip("flask_sqlalchemy.record_queries")
flask_sqlalchemy_lite = pytest.importorskip("flask_sqlalchemy_lite")


def make_flask_sqlalchemy(url):
    """Return an app with Flask-SQLAlchemy on the database, and its extension."""
    app = Flask("with_flask_sqlalchemy")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    return app, flask_sqlalchemy.SQLAlchemy(app)


def make_flask_sqlalchemy_lite(url):
    """Return an app with Flask-SQLAlchemy-Lite on the database, and its extension."""
    app = Flask("with_flask_sqlalchemy_lite")
    app.config["SQLALCHEMY_ENGINES"] = {"default": url}
    return app, flask_sqlalchemy_lite.SQLAlchemy(app)


EXTENSIONS = [make_flask_sqlalchemy, make_flask_sqlalchemy_lite]


@pytest.fixture
def url(tmp_path):
    """Return the URL of a SQLite file of the test's own."""
    return f"sqlite:///{tmp_path / 'extension.sqlite'}"


@pytest.mark.parametrize("make", EXTENSIONS)
def test_each_app_context_gets_its_own_session_released_at_teardown(make, url):
    app, db = make(url)

    def current_session():
        # Flask-SQLAlchemy's db.session is its scoped_session registry;
        # Flask-SQLAlchemy-Lite's is the Session itself.
        session = db.session
        return session() if callable(session) else session

    with app.app_context():
        outer = current_session()
        outer.execute(text("SELECT 1"))
        with app.app_context():
            inner = current_session()
        assert current_session() is outer
        engine = db.engine

    assert inner is not outer
    # teardown_appcontext gave the connection back.
    assert engine.pool.checkedout() == 0


def test_flask_sqlalchemy_keys_a_scoped_session_by_the_app_contexts_id(url):
    app, db = make_flask_sqlalchemy(url)

    assert db.session.registry.scopefunc is flask_sqlalchemy.session._app_ctx_id


@pytest.mark.parametrize("make", EXTENSIONS)
def test_an_async_view_gives_its_connection_back_at_teardown(make, url):
    # An async view on each extension, the garbage collector off: both key
    # the Session by the app context, which the view's thread shares with
    # the request, so teardown closes the Session the view used.
    app, db = make(url)

    async def read_async():
        session = db.session() if callable(db.session) else db.session
        return {"one": session.execute(text("SELECT 1")).scalar()}

    app.add_url_rule("/async", view_func=read_async)
    client = app.test_client()
    with app.app_context():
        engine = db.engine

    gc.collect()
    gc.disable()
    try:
        answers = [
            (client.get("/async").status_code, engine.pool.checkedout())
            for _ in range(10)
        ]
    finally:
        gc.enable()

    assert answers == [(200, 0)] * 10


@pytest.mark.parametrize("make", EXTENSIONS)
def test_no_pool_defaults_of_their_own(make, url):
    app, db = make(url)

    with app.app_context():
        pool = db.engine.pool

    assert pool.size() == 5
    assert pool.timeout() == 30
    assert pool._pre_ping is False
    assert pool._recycle == -1


@pytest.mark.parametrize("make", EXTENSIONS)
def test_driver_defaults_for_sqlite(make, tmp_path):
    memory_app, memory_db = make("sqlite://")
    relative_app, relative_db = make("sqlite:///relative.sqlite")
    relative_app.instance_path = str(tmp_path)

    with memory_app.app_context():
        assert isinstance(memory_db.engine.pool, StaticPool)
    with relative_app.app_context():
        database = relative_db.engine.url.database
    # A relative path lands in the app's instance folder.
    assert database.endswith("/instance/relative.sqlite")


@pytest.fixture
def mariadb_url(mariadb):
    """Return the URL of a MariaDB database of the test's own, no charset in it."""
    if mariadb is None:
        skip_or_fail(HOW_TO_GET_MARIADB)
    url = mariadb.create_database()
    yield make_url(url).difference_update_query(["charset"])
    mariadb.drop_database(url)


@pytest.mark.parametrize("make", EXTENSIONS)
def test_driver_defaults_for_mysql_apply_to_mysql_urls_not_mariadb_ones(
    make, mariadb_url
):
    # Both read the URL's name: Flask-SQLAlchemy's drivername starts with
    # "mysql", Lite's backend is "mysql". The same server, named mariadb,
    # gets neither default.
    engines = {}
    for name in ("mysql", "mariadb"):
        app, db = make(
            mariadb_url.set(drivername=f"{name}+pymysql").render_as_string(
                hide_password=False
            )
        )
        with app.app_context():
            engines[name] = db.engine

    mysql, mariadb = engines["mysql"], engines["mariadb"]
    # The dialect's name too, which step 5's init-db names its schema by.
    assert (mysql.dialect.name, mariadb.dialect.name) == ("mysql", "mariadb")
    assert mysql.url.query["charset"] == "utf8mb4"
    assert mysql.pool._recycle == 7200
    assert "charset" not in mariadb.url.query
    assert mariadb.pool._recycle == -1
    # Both reach the real server, and an emoji survives the round trip.
    for engine in (mysql, mariadb):
        with engine.connect() as connection:
            echoed = connection.execute(text("SELECT :text"), {"text": "😀"})
            assert echoed.scalar() == "😀"
        engine.dispose()


@pytest.mark.parametrize("make", EXTENSIONS)
def test_no_fork_safety_a_forked_child_uses_the_inherited_connection(make, url):
    app, db = make(url)
    with app.app_context():
        engine = db.engine
    connects = []
    event.listen(engine, "connect", lambda *args: connects.append(args))
    with app.app_context():
        db.session.execute(text("SELECT 1"))

    def query_in_the_child():
        with app.app_context():
            db.session.execute(text("SELECT 1"))
        return len(connects)

    # Nothing gave the child a pool of its own: it opened no connection.
    assert in_forked_child(query_in_the_child) == 1


def test_lite_registers_an_async_teardown_that_flask_runs_on_every_request(url):
    app, db = make_flask_sqlalchemy_lite(url)

    coroutines = [
        function
        for function in app.teardown_appcontext_funcs
        if inspect.iscoroutinefunction(function)
    ]

    # Flask runs it through asgiref's async_to_sync: the benchmark's cost.
    assert [function.__name__ for function in coroutines] == ["_close_async_sessions"]


def test_what_each_offers_for_404_pagination_and_recorded_queries(url):
    flask_app, flask_db = make_flask_sqlalchemy(url)
    lite_app, lite_db = make_flask_sqlalchemy_lite(url)

    for name in ("get_or_404", "first_or_404", "one_or_404", "paginate", "reflect"):
        assert callable(getattr(flask_db, name))
    assert callable(record_queries.get_recorded_queries)
    assert callable(lite_db.get_or_abort)
    assert callable(lite_db.one_or_abort)
    for name in ("paginate", "reflect", "get_or_404"):
        assert not hasattr(lite_db, name)
    assert not hasattr(flask_db, "test_isolation")


def test_lite_test_isolation_hands_out_one_patched_connection(url):
    app, db = make_flask_sqlalchemy_lite(url)

    with app.app_context():
        engine = db.engine
        with db.test_isolation():
            first, second = engine.connect(), engine.connect()
            # engine.connect is patched to return one connection, whose
            # close() is patched to do nothing.
            assert first is second
            first.close()
            assert not first.closed
        # Outside the block, each connect() is a connection of its own again.
        third, fourth = engine.connect(), engine.connect()
        assert third is not fourth
        third.close()
        fourth.close()


def test_flask_sqlalchemy_binds_a_model_by_the_metadata_of_its_bind_key(tmp_path):
    app = Flask("with_binds")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'main.sqlite'}"
    app.config["SQLALCHEMY_BINDS"] = {"audit": f"sqlite:///{tmp_path / 'audit.sqlite'}"}
    db = flask_sqlalchemy.SQLAlchemy(app)

    class Message(db.Model):
        id = db.Column(db.Integer, primary_key=True)

    class AuditEntry(db.Model):
        __bind_key__ = "audit"
        id = db.Column(db.Integer, primary_key=True)

    with app.app_context():
        # __bind_key__ gives the model a MetaData of its own, tagged with the
        # key; the Session's get_bind() reads the tag to pick the engine,
        # and a model without one goes to the default engine.
        assert AuditEntry.metadata is not Message.metadata
        assert AuditEntry.metadata.info == {"bind_key": "audit"}
        assert db.session.get_bind(mapper=AuditEntry) is db.engines["audit"]
        assert db.session.get_bind(mapper=Message) is db.engines[None]
        # Each model's table name comes from its class name.
        assert AuditEntry.__table__.name == "audit_entry"


def test_lite_test_isolation_hands_its_one_connection_to_any_thread(url):
    app, db = make_flask_sqlalchemy_lite(url)

    with app.app_context():
        engine = db.engine
        with db.test_isolation():
            here = engine.connect()
            # No guard: another thread gets the very same connection.
            elsewhere = run_in_new_thread(engine.connect)
            assert elsewhere is here
