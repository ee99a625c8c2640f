"""An example conftest.py: copy it beside your tests, with testing.py.

One app serves the whole run; each test that asks for ``client`` (or
``isolated_app``) runs in isolation, and what it wrote is gone after it.
"""

import os
from collections.abc import Iterator

import pytest
from flask import Flask

from step12_replicas import create_app
from step12_replicas.testing import client  # noqa: F401 (a fixture)
from step12_replicas.testing import isolated_app  # noqa: F401 (a fixture)


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """Create the app once, on test databases whose tables init-db created."""
    # TEST_DATABASE_URL and TEST_AUDIT_DATABASE_URL name databases that the
    # tests may use; without them, two SQLite files of the run's own.
    folder = tmp_path_factory.mktemp("databases")
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": os.environ.get(
                "TEST_DATABASE_URL", f"sqlite:///{folder / 'messages.sqlite'}"
            ),
            "AUDIT_DATABASE_URL": os.environ.get(
                "TEST_AUDIT_DATABASE_URL", f"sqlite:///{folder / 'audit.sqlite'}"
            ),
        }
    )
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    yield app
    for engine in app.extensions["engines"].values():
        engine.dispose()
