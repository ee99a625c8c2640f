"""Step 1: one Engine per app, created once; its pool makes connections reusable.

Engine Disposal, in SQLAlchemy's documentation: the Engine is meant to be
created once per process, not per connection or per request.
"""

import pytest
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import select
from sqlalchemy.pool import Pool

from .steps import pool_status
from .steps import steps_from

REQUESTS = 10


@pytest.mark.parametrize("step", steps_from("step01_engine"))
def test_the_engine_is_created_once_and_serves_every_request(step, make_app):
    app = make_app(step)
    engine = app.extensions["engine"]
    client = app.test_client()

    for number in range(REQUESTS):
        client.post("/messages", json={"text": f"message {number}"})
        client.get("/messages")

    assert app.extensions["engine"] is engine
    # Twenty requests, one connection: the pool lends it again and again.
    assert pool_status(client)["connects"] == 1


def test_disposing_the_engine_after_each_request_opens_a_connection_per_request(
    make_app,
):
    app = make_app("step01_engine")

    # What a reader proposed "to make sure there's no stale connection".
    @app.after_request
    def dispose_engine(response):
        app.extensions["engine"].dispose()
        return response

    client = app.test_client()
    for _ in range(REQUESTS):
        assert client.get("/messages").status_code == 200

    # dispose() throws the pool away: every request pays for a new connection.
    assert pool_status(client)["connects"] == REQUESTS


def test_an_engine_per_request_opens_a_connection_per_request(make_app):
    app = make_app("step01_engine")
    engine_options = app.config["ENGINE_OPTIONS"]

    @app.get("/messages-with-a-new-engine")
    def list_messages_with_a_new_engine():
        engine = create_engine(app.config["DATABASE_URL"], **engine_options)
        with engine.connect() as connection:
            rows = connection.execute(select(1)).all()
        engine.dispose()
        return {"rows": len(rows)}

    connects = []

    def count_connect(dbapi_connection, connection_record):
        connects.append(dbapi_connection)

    # Counts the connections of every pool, the app's and the new engines'.
    event.listen(Pool, "connect", count_connect)
    try:
        client = app.test_client()
        for _ in range(REQUESTS):
            assert client.get("/messages-with-a-new-engine").status_code == 200
        for _ in range(REQUESTS):
            assert client.get("/messages").status_code == 200
    finally:
        event.remove(Pool, "connect", count_connect)

    # One connection per request through a new engine, then one for all the
    # requests through the app's engine.
    assert len(connects) == REQUESTS + 1
