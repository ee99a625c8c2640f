"""What every user of a step's app does around it: init-db, and closing it."""


def databases_in(env):
    """Return the database URLs among a step's environment variables."""
    return {
        key: env[key] for key in ("DATABASE_URL", "AUDIT_DATABASE_URL") if key in env
    }


def initialize_databases(create_app, databases):
    """Run a step's ``flask init-db`` on its databases, in this process.

    It runs through the CLI of an app of its own, whose pools are closed
    after, so that the app or server under test starts with untouched pools
    (from step 5 on: none but the one that maps its models).
    """
    initializer = create_app(databases)
    result = initializer.test_cli_runner().invoke(args=["init-db"])
    assert result.output == "Initialized the database.\n", result.output
    dispose_engines(initializer)


def dispose_engines(app):
    """Close every pooled connection of the app's engines."""
    for engine in app.extensions["engines"].values():
        engine.dispose()


def close_app(app):
    """Close what an app holds: this thread's Session, its engines' pools."""
    # Clean up what a step without teardown leaves in this thread.
    if "session" in app.extensions:
        with app.app_context():
            app.extensions["session"].remove()
    dispose_engines(app)
