"""The cases: apps that answer ``GET /messages/<id>`` with the same JSON.

Each returns the same columns of the same row. Step 4's engine options are
the options of every case that compares itself with step 4.
"""

from flask import Flask
from flask import abort
from flask.globals import app_ctx
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

import step01_engine
import step02_session
import step03_teardown
import step04_pooling
from step04_pooling.db import POOL_DEFAULTS
from step04_pooling.models import Message
from testbed.step_apps import dispose_engines
from testbed.step_apps import initialize_databases

STEPS = {
    "step01_engine": step01_engine,
    "step02_session": step02_session,
    "step03_teardown": step03_teardown,
    "step04_pooling": step04_pooling,
}


def prepare_database(url):
    """Create the table and one message; return the path that reads it."""
    databases = {"DATABASE_URL": url}
    initialize_databases(step04_pooling.create_app, databases)
    app = step04_pooling.create_app(databases)
    response = app.test_client().post("/messages", json={"text": "benchmarked"})
    dispose_engines(app)
    return response.headers["Location"]


def answer_messages(app, find):
    """Route ``GET /messages/<id>`` to ``find(id)``, which returns the JSON."""
    app.add_url_rule(
        "/messages/<int:message_id>",
        "get_message",
        lambda message_id: find(message_id),
    )
    return app


def found_or_404(message):
    """Return a message as the API shows it, or abort with 404."""
    if message is None:
        abort(404)
    return message.to_dict()


def no_database(url, message):
    """Flask alone: the same JSON, from memory."""
    return answer_messages(Flask("no_database"), lambda message_id: message)


def pooled_core_query(url, message):
    """Flask and a pooled Core query, nothing else."""
    engine = create_engine(url, **POOL_DEFAULTS)
    table = Message.__table__

    def find(message_id):
        with engine.connect() as connection:
            row = connection.execute(
                select(table).where(table.c.id == message_id)
            ).one_or_none()
        return found_or_404(None if row is None else Message(**row._asdict()))

    return answer_messages(Flask("pooled_core_query"), find)


def step(name):
    """A step's own app, with its own settings."""

    def make(url, message):
        return STEPS[name].create_app({"DATABASE_URL": url})

    make.__doc__ = f"{name} as it is."
    return make


def step04_without_pre_ping(url, message):
    """Step 4 with pool_pre_ping off."""
    return step04_pooling.create_app(
        {"DATABASE_URL": url, "ENGINE_OPTIONS": {"pool_pre_ping": False}}
    )


def bare_scoped_session(url, message, scopefunc=None, **engine_options):
    """The article's technique in ten lines, with step 4's engine options."""
    engine = create_engine(url, **(engine_options or POOL_DEFAULTS))
    session = scoped_session(sessionmaker(bind=engine), scopefunc=scopefunc)
    app = Flask("bare_scoped_session")
    app.teardown_appcontext(lambda exception: session.remove())
    app.extensions["engine"] = engine
    return answer_messages(
        app, lambda message_id: found_or_404(session.get(Message, message_id))
    )


def app_context_scope(url, message):
    """The same ten lines, the Session keyed by the app context (step 9)."""
    return bare_scoped_session(
        url, message, scopefunc=lambda: id(app_ctx._get_current_object())
    )


def flask_sqlalchemy(url, message, **engine_options):
    """Flask-SQLAlchemy 3.1: the same model and query, step 4's engine options."""
    from flask_sqlalchemy import SQLAlchemy

    app = Flask("flask_sqlalchemy")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options or POOL_DEFAULTS
    db = SQLAlchemy(app)
    return answer_messages(
        app, lambda message_id: db.get_or_404(Message, message_id).to_dict()
    )


def flask_sqlalchemy_lite(url, message):
    """Flask-SQLAlchemy-Lite: the same model and query, step 4's engine options."""
    from flask_sqlalchemy_lite import SQLAlchemy

    app = Flask("flask_sqlalchemy_lite")
    app.config["SQLALCHEMY_ENGINES"] = {"default": {"url": url, **POOL_DEFAULTS}}
    db = SQLAlchemy(app)
    return answer_messages(
        app, lambda message_id: db.get_or_abort(Message, message_id).to_dict()
    )


def lite_without_async_teardown(url, message):
    """Flask-SQLAlchemy-Lite with its async teardown taken out: where its cost is."""
    app = flask_sqlalchemy_lite(url, message)
    # The extension registers an async teardown function for async sessions;
    # Flask runs it through asgiref's async_to_sync, a thread, on every
    # request, even when no async session exists.
    app.teardown_appcontext_funcs[:] = [
        function
        for function in app.teardown_appcontext_funcs
        if function.__name__ != "_close_async_sessions"
    ]
    return app


def engine_per_request(url, message):
    """Anti-pattern: a new engine, and so a new connection, for every request."""

    def find(message_id):
        engine = create_engine(url)
        try:
            with sessionmaker(bind=engine)() as session:
                return found_or_404(session.get(Message, message_id))
        finally:
            engine.dispose()

    return answer_messages(Flask("engine_per_request"), find)


def dispose_per_request(url, message):
    """Anti-pattern: ``engine.dispose()`` after every request."""
    app = bare_scoped_session(url, message)

    @app.after_request
    def dispose(response):
        app.extensions["engine"].dispose()
        return response

    return app


def null_pool(url, message):
    """Anti-pattern: no pool at all, a connection opened per checkout."""
    return bare_scoped_session(url, message, poolclass=NullPool)


CASES = {
    "Flask, no database": no_database,
    "Flask + pooled Core query": pooled_core_query,
    "step01_engine": step("step01_engine"),
    "step02_session": step("step02_session"),
    "step03_teardown": step("step03_teardown"),
    "step04_pooling": step("step04_pooling"),
    "step04, pre-ping off": step04_without_pre_ping,
    "bare scoped_session": bare_scoped_session,
    "bare, app-context scope": app_context_scope,
    "Flask-SQLAlchemy 3.1": flask_sqlalchemy,
    "Flask-SQLAlchemy-Lite": flask_sqlalchemy_lite,
    "Flask-SQLAlchemy-Lite, no async teardown": lite_without_async_teardown,
    "create_engine() per request": engine_per_request,
    "dispose() per request": dispose_per_request,
    "NullPool": null_pool,
}

# The ratios are to step 4.
BASELINE = "step04_pooling"
