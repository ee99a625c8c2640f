"""Step 3: remove the thread's session when the app context tears down."""

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import db
from . import monitor
from . import views  # noqa: F401 (adds its routes to web.bp)
from . import web


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
        # Keyword arguments for create_engine(), over the step's defaults.
        ENGINE_OPTIONS={},
        # A message is at most 500 characters; refuse bodies far larger.
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    # FLASK_DATABASE_URL=..., FLASK_ENGINE_OPTIONS='{"pool_size": 2}', ...
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.from_mapping(test_config)

    os.makedirs(app.instance_path, exist_ok=True)

    db.init_app(app)
    monitor.init_app(app)
    app.register_blueprint(web.bp)
    return app
