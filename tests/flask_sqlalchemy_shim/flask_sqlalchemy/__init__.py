"""Flask-SQLAlchemy's names, answered by step 10: a shim, not the extension.

Only what the extension's tests that apply to step 10 ask of it: each name
maps to step 10's code, and what step 10 does not re-implement is missing,
so that a test of it fails rather than passes on the shim's say-so.
"""

import types

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import DeclarativeBaseNoMeta
from sqlalchemy.orm import declarative_base
from sqlalchemy.pool import StaticPool

from step10_helpers import db as step10_db
from step10_helpers import helpers

from .model import Model

# The extension's tests ask for an in-memory SQLite database, for which the
# extension keeps one connection that every Session shares (its
# _apply_driver_defaults): otherwise each connection would open an empty
# database of its own. Step 10 takes the same as ENGINE_OPTIONS, where None
# drops its pool settings, which StaticPool does not take.
IN_MEMORY_SQLITE = "sqlite://"
SHARED_CONNECTION = {
    "poolclass": StaticPool,
    "connect_args": {"check_same_thread": False},
    "pool_size": None,
    "max_overflow": None,
    "pool_timeout": None,
}


class SQLAlchemy:
    """``db``: an app made a step 10 app, and step 10's helpers."""

    # db.paginate(...) is helpers.paginate(...), and so on; db.select is
    # SQLAlchemy's select, as the extension's is.
    paginate = staticmethod(helpers.paginate)
    get_or_404 = staticmethod(helpers.get_or_404)
    first_or_404 = staticmethod(helpers.first_or_404)
    one_or_404 = staticmethod(helpers.one_or_404)
    select = staticmethod(select)

    def __init__(self, app, *, model_class=Model):
        if app.config["SQLALCHEMY_DATABASE_URI"] != IN_MEMORY_SQLITE:
            raise NotImplementedError("the shim maps the tests' in-memory SQLite only")
        # The extension's settings under step 10's names. Step 10's second
        # database, its audit log's, is another in-memory one that the
        # tests never use. There is no SQLALCHEMY_TRACK_MODIFICATIONS: step
        # 10 always sends the signals.
        app.config.update(
            DATABASE_URL=IN_MEMORY_SQLITE,
            AUDIT_DATABASE_URL=IN_MEMORY_SQLITE,
            ENGINE_OPTIONS=SHARED_CONNECTION,
            BEHIND_POOLER=False,
            RECORD_QUERIES=app.config.get("SQLALCHEMY_RECORD_QUERIES", False),
        )
        # What step 10's create_app() does: its engines, its Session
        # registry keyed by the app context, its teardown and init-db; then
        # its helpers: recorded queries, the signals, flask shell's names.
        step10_db.init_app(app)
        helpers.init_app(app)
        # db.session is step 10's registry, the one db.get_session() calls.
        self.session = app.extensions["session"]
        self.Model = declarative_base_for(model_class)

    def create_all(self):
        """Create step 10's tables, as its init-db does, then those of the
        models declared on ``Model``."""
        result = current_app.test_cli_runner().invoke(args=["init-db"])
        if result.exit_code:
            raise RuntimeError(result.output) from result.exception
        self.Model.metadata.create_all(current_app.extensions["engine"])

    def drop_all(self):
        """Drop the tables of the models declared on ``Model``."""
        self.Model.metadata.drop_all(current_app.extensions["engine"])


def declarative_base_for(model_class):
    """Return the base the tests' models subclass, made from ``model_class``
    as the extension makes it, with its table names.

    Step 10's Session binds its own bases to its two databases; a class of
    this base has no bind of its own, so its statements go to the Session's
    default engine: the app's main database, as they would in the extension.
    """
    if issubclass(model_class, DeclarativeBase | DeclarativeBaseNoMeta):
        # A SQLAlchemy 2.x base: an abstract class under it names the tables.
        return types.new_class(
            model_class.__name__,
            (Model, model_class),
            exec_body=lambda body: body.update(__abstract__=True),
        )
    # The extension's default, for the SQLAlchemy 1.x style.
    return declarative_base(cls=model_class, name="Model")
