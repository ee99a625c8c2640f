"""The steps under test: which there are, where a concept starts, what each holds."""

import importlib

from sqlalchemy.util import ThreadLocalRegistry

from testbed import ROOT

# Every step package in the repository, so that a new step joins the shared
# suite by existing.
STEPS = sorted(
    path.name
    for path in ROOT.glob("step[0-9][0-9]_*")
    if (path / "__init__.py").is_file()
)

# The pool of the load tests: two connections, no overflow.
SMALL_POOL = {"pool_size": 2, "max_overflow": 0}


def steps_from(first):
    """Return the steps that keep the concept ``first`` introduced."""
    return [step for step in STEPS if step >= first]


# Step 7 adds a test helper, testing.py, and its app runs as step 6's does:
# its db.py, models.py and views.py are step 6's, byte for byte
# (tests/test_layout.py). The tests that start servers, fork or send load
# leave it out; its own tests and the contract run on it as on every step.
RUNS_AS_THE_STEP_BEFORE = {"step07_testing": "step06_multiple_databases"}


# Step 11 changes where the schema comes from (migrations) and adds the
# flask db commands; what serves a request is step 10's: views.py,
# helpers.py and async_views.py byte for byte, and db.py's Session, pools
# and teardown line for line (tests/test_layout.py). The tests of serving
# (servers, forks, load) leave it out too; the contract, the schema's
# tests and its own run on it.
#
# Step 12 with no standby configured, as every test but its own runs it,
# serves as step 11 does, by the same measure: what it adds runs only
# with standbys, and its own tests run it so, under gunicorn too.
SERVES_AS_THE_STEP_BEFORE = {
    **RUNS_AS_THE_STEP_BEFORE,
    "step11_migrations": "step10_helpers",
    "step12_replicas": "step11_migrations",
}


def served(steps):
    """Return the steps but those whose app serves as the step before's does."""
    return [step for step in steps if step not in SERVES_AS_THE_STEP_BEFORE]


# The steps whose app has a second database, for its audit log.
STEPS_WITH_TWO_DATABASES = steps_from("step06_multiple_databases")

# The steps whose scoped_session keys its Sessions by the app context, and
# those before, which key them by thread.
STEPS_WITH_APP_CONTEXT_SCOPE = steps_from("step09_app_context")
STEPS_WITH_THREAD_SCOPE = [
    step
    for step in steps_from("step02_session")
    if step not in STEPS_WITH_APP_CONTEXT_SCOPE
]


# The steps whose models are reflected from the database (step 5), and
# those whose models declare the schema, which migrations give the
# databases (step 11).
STEPS_WITH_MIGRATIONS = steps_from("step11_migrations")
STEPS_WITH_REFLECTED_MODELS = [
    step
    for step in steps_from("step05_reflection")
    if step not in STEPS_WITH_MIGRATIONS
]


def keeps_a_session(registry):
    """Say whether a scoped_session still keeps a Session: this thread's,
    where Sessions are kept per thread, or any app context's."""
    if isinstance(registry.registry, ThreadLocalRegistry):
        return registry.registry.has()
    return bool(registry.registry.registry)


def connections_opened_at_startup(step):
    """Return how many connections creating the step's app opens: its pool's
    first, from step 5 on, where the app maps its models from the database."""
    return 1 if step in steps_from("step05_reflection") else 0


def message_class(app):
    """Return the app's mapped Message class.

    Steps 2 to 4 declare it once, in their models module; from step 5 on,
    each app maps a class of its own from its database's tables.
    """
    if "models" in app.extensions:
        return app.extensions["models"].get().Message
    return importlib.import_module(f"{app.import_name}.models").Message


def import_step(step):
    """Import a step package by name."""
    return importlib.import_module(step)


def pool_status(client):
    """Return what ``GET /pool`` answers."""
    response = client.get("/pool")
    assert response.status_code == 200
    return response.get_json()
