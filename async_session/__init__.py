"""AsyncSession in Flask: async views on an AsyncSession, four ways (docs/async.md)."""

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import db
from . import views  # noqa: F401 (adds its routes to web.bp)
from . import web


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create and configure an instance of the app."""
    app = db.AsyncSessionFlask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        # The steps' DATABASE_URL: the app swaps in its async driver.
        DATABASE_URL=os.environ.get(
            "DATABASE_URL",
            "sqlite:///" + os.path.join(app.instance_path, f"{app.name}.sqlite"),
        ),
        # Which event loop runs an async view, and which engine it uses:
        # FLASK_ASYNC_PATTERN=nullpool, for one (db.PATTERNS).
        ASYNC_PATTERN="one-loop",
        # Keyword arguments for create_async_engine(), over the pattern's.
        ENGINE_OPTIONS={},
        # A message is at most 500 characters; refuse bodies far larger.
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.from_mapping(test_config)

    os.makedirs(app.instance_path, exist_ok=True)

    db.init_app(app)
    app.register_blueprint(web.bp)
    return app
