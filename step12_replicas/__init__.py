"""Step 12: reads from PostgreSQL standbys, writes to the primary, read-your-writes."""

import os
from collections.abc import Mapping
from typing import Any

from . import db
from . import helpers
from . import migrate
from . import monitor
from . import views  # noqa: F401 (adds its routes to web.bp)
from . import web

# Flask, whose async views run on threads and under gevent alike.
from .async_views import Flask


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create and configure an instance of the app."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        # The DATABASE_URL environment variable, if set, replaces the
        # default SQLite file in the instance folder.
        DATABASE_URL=os.environ.get(
            "DATABASE_URL",
            "sqlite:///" + os.path.join(app.instance_path, f"{app.name}.sqlite"),
        ),
        # The audit log of every write lives in a database of its own: by
        # default, a second SQLite file beside the first.
        AUDIT_DATABASE_URL=os.environ.get(
            "AUDIT_DATABASE_URL",
            "sqlite:///" + os.path.join(app.instance_path, f"{app.name}-audit.sqlite"),
        ),
        # The messages database's standbys, which reads go to:
        # FLASK_REPLICA_DATABASE_URLS='["postgresql+psycopg://..."]'. None:
        # every statement goes to DATABASE_URL, on any database.
        REPLICA_DATABASE_URLS=[],
        # A standby that did not answer is left alone this many seconds.
        REPLICA_RETRY_SECONDS=5.0,
        # Keyword arguments for every create_engine() call, over the step's
        # defaults.
        ENGINE_OPTIONS={},
        # True when the databases are reached through a pooler in
        # transaction mode, such as PgBouncer: FLASK_BEHIND_POOLER=true.
        BEHIND_POOLER=False,
        # True: get_recorded_queries() lists each query of the app context,
        # as Flask-SQLAlchemy's SQLALCHEMY_RECORD_QUERIES does.
        RECORD_QUERIES=False,
        # A message is at most 500 characters; refuse bodies far larger.
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    # FLASK_DATABASE_URL=..., FLASK_ENGINE_OPTIONS='{"pool_size": 2}', ...
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.from_mapping(test_config)

    os.makedirs(app.instance_path, exist_ok=True)

    db.init_app(app)
    helpers.init_app(app)
    # flask db upgrade, migrate, check...: Alembic, on the engines above.
    # MIGRATIONS_FOLDER and MIGRATION_LOCK_TIMEOUT (seconds) configure it.
    migrate.init_app(app)
    monitor.init_app(app)
    app.register_blueprint(web.bp)
    return app
