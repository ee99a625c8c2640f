"""Which of Flask-SQLAlchemy's own tests apply to step 10, and how each ends.

A pytest plugin (``-p step10_plan``) for the run that
tests/test_flask_sqlalchemy_suite.py starts in the release's sdist. Every
test file of the release is either run or named below with the reason it
does not apply; the tests that apply run unchanged, and those that fail by
design are expected to fail, strictly: one that starts passing fails the run.
"""

import pytest

# The release readers compare step 10 with, and its sdist's SHA-256 as the
# package index lists it.
RELEASE = "3.1.1"
SDIST_SHA256 = "e4b68bb881802dda1a7d878b2fc84c06d1ee57fb40b874d3dc97dabfa36b8312"

# The test files that test what step 10 writes by hand.
APPLIES = {
    "test_pagination.py": "db.paginate(), the Pagination's fields and iter_pages()",
    "test_view_query.py": "get_or_404(), first_or_404(), one_or_404(), paginate()",
    "test_record_queries.py": "get_recorded_queries()",
    "test_track_modifications.py": "models_committed, before_models_committed",
    "test_cli.py": "the names flask shell starts with",
    "test_session.py": "the Session's scope: one per app context",
}

# The rest, whole files and single tests, test what step 10 leaves to
# plain SQLAlchemy or does its own way, as steps 1 to 9 show it.
DOES_NOT_APPLY = {
    "test_engine.py": "the extension's engine settings (SQLALCHEMY_ENGINE_OPTIONS,"
    " SQLALCHEMY_BINDS, its driver defaults): step 10 makes its two engines"
    " with ENGINE_OPTIONS over step 4's pool settings",
    "test_extension_object.py": "the SQLAlchemy object itself (init_app(), its"
    " repr, its engines per app): step 10 has no such object",
    "test_legacy_query.py": "Model.query and the Query class: step 10 uses"
    " SQLAlchemy 2.x's select()",
    "test_metadata.py": "a MetaData per bind key, create_all() and drop_all():"
    " step 10's init-db applies SQL schema files",
    "test_model.py": "db.Model's own features (its repr, Model.query, its"
    " dataclass bases): step 10's models are plain SQLAlchemy classes",
    "test_model_bind.py": "__bind_key__ on a model: step 10 sends a class to"
    " its database by its base, with the Session's binds (step 6)",
    "test_model_name.py": "table names made from class names: step 10's"
    " tables are named in its schema files",
    "test_table_bind.py": "db.Table(bind_key=...): step 10 binds by base",
    "test_session.py::test_custom_scope": "the session_options that replace"
    " the Session's scope: step 10's scope is its own, the app context",
    "test_session.py::test_session_class": "session_options' class_ and the"
    " extension's Session class: step 10's Session is SQLAlchemy's",
    "test_session.py::test_session_uses_bind_key": "__bind_key__ and"
    " SQLALCHEMY_BINDS: step 10 binds by base",
    "test_session.py::test_get_bind_inheritance": "__bind_key__ on a class"
    " that others inherit: step 10 binds by base",
    "test_session.py::test_session_multiple_dbs": "__bind_key__ and"
    " SQLALCHEMY_BINDS: step 10 binds by base",
}

# The differences kept by design: the error each test fails with, and why.
EXPECTED_FAILURES = {
    "test_cli.py::test_shell_context": (
        KeyError,
        "step 10's flask shell starts with its Session and its models"
        " (session, Message, AuditEntry): there is no db object to offer",
    ),
}

# What the run comes to: the items that apply, by outcome, and those of
# the files that apply that do not. The pages cite these figures.
OUTCOMES = {"passed": 113, "xfailed": 5, "deselected": 25}


def planned(item):
    """Return an item's key in the tables above: file::function."""
    return f"{item.path.name}::{item.originalname}"


def pytest_report_header(config):
    """Say which flask_sqlalchemy the tests import: this shim."""
    import flask_sqlalchemy

    return f"flask_sqlalchemy: {flask_sqlalchemy.__file__}"


def pytest_ignore_collect(collection_path, config):
    """Leave out the test files that do not apply."""
    if collection_path.name in DOES_NOT_APPLY:
        return True
    return None


def pytest_collection_modifyitems(config, items):
    """Check that the plan names every file and test it should, deselect
    the tests that do not apply, and expect the failures by design."""
    files = {path.name for path in (config.rootpath / "tests").glob("test_*.py")}
    whole_files = {key for key in DOES_NOT_APPLY if "::" not in key}
    if unplanned := files ^ (set(APPLIES) | whole_files):
        raise pytest.UsageError(f"files the plan or the release lacks: {unplanned}")
    # Of the files collected (all of them, unless a run names some).
    collected = {item.path.name for item in items}
    named = {
        key
        for key in [*DOES_NOT_APPLY, *EXPECTED_FAILURES]
        if key.partition("::")[0] in collected and "::" in key
    }
    if unknown := named - {planned(item) for item in items}:
        raise pytest.UsageError(f"the plan names tests that do not exist: {unknown}")

    deselected = [item for item in items if planned(item) in DOES_NOT_APPLY]
    config.hook.pytest_deselected(items=deselected)
    items[:] = [item for item in items if item not in deselected]
    for item in items:
        if planned(item) in EXPECTED_FAILURES:
            error, reason = EXPECTED_FAILURES[planned(item)]
            item.add_marker(pytest.mark.xfail(raises=error, reason=reason, strict=True))
