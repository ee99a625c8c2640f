"""Every step runs under a real ``flask run`` and keeps its contract over HTTP."""

import json

import pytest
from sqlalchemy.engine import make_url

from .steps import STEPS
from .steps import served


@pytest.mark.parametrize("step", served(STEPS))
def test_flask_run_serves_the_api_and_the_page_with_engine_options_from_the_env(
    step, serve, database_url
):
    # Room for the four connections step 2 leaves checked out (no teardown).
    options = {"pool_size": 3, "max_overflow": 1}
    server = serve(step, FLASK_ENGINE_OPTIONS=json.dumps(options))

    created = server.post("/messages", json={"text": "over HTTP"})
    assert created.status_code == 201
    message = created.json()
    assert server.get(f"/messages/{message['id']}").json() == message
    assert server.get("/messages").json() == [message]

    page = server.get("/")
    assert page.status_code == 200
    assert "over HTTP" in page.text

    status = server.get("/pool").json()
    assert status["url"] == make_url(database_url).render_as_string()
    assert status["pid"] == server.process.pid
    assert status["connects"] >= 1
    # FLASK_ENGINE_OPTIONS, read as JSON by from_prefixed_env().
    assert status["size"] == 3
    assert status["options"]["max_overflow"] == 1

    error = server.post("/messages", json={"text": ""})
    assert error.status_code == 400
    assert error.headers["Content-Type"] == "application/json"
    assert "1 to 500" in error.json()["error"]
