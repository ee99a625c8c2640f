"""Example tests: each writes through the API, and none sees another's writes.

Run them with ``.venv/bin/pytest step12_replicas/example_tests``: pytest
runs the tests of a file in order, and the third finds nothing of what the
first two, and the second's fixture, wrote and committed.
"""

from typing import Any

import pytest
from flask.testing import FlaskClient


def test_a_message_written_and_committed(client: FlaskClient) -> None:
    response = client.post("/messages", json={"text": "only in this test"})

    assert response.status_code == 201
    assert [m["text"] for m in client.get("/messages").get_json()] == [
        "only in this test"
    ]
    assert [entry["action"] for entry in client.get("/audit").get_json()] == ["create"]


@pytest.fixture
def greeting(client: FlaskClient) -> dict[str, Any]:
    """Return a message that a fixture wrote: rolled back with the test."""
    response = client.post("/messages", json={"text": "hello"})
    created: dict[str, Any] = response.get_json()
    return created


def test_a_fixture_writes_inside_the_same_isolation(
    client: FlaskClient, greeting: dict[str, Any]
) -> None:
    assert client.get("/messages").get_json() == [greeting]


def test_the_next_test_finds_none_of_it(client: FlaskClient) -> None:
    assert client.get("/messages").get_json() == []
    assert client.get("/audit").get_json() == []


def test_ids_are_not_to_be_counted_on(client: FlaskClient) -> None:
    # PostgreSQL's sequences do not roll back: an id taken in a rolled-back
    # transaction stays taken. Assert what a response says, not a number.
    created = client.post("/messages", json={"text": "any id"}).get_json()

    assert client.get(f"/messages/{created['id']}").get_json() == created
