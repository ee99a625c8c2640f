"""Every step runs under a real ``flask run`` and keeps its contract over HTTP."""

import json

from sqlalchemy.engine import make_url


def test_flask_run_serves_the_api_the_page_and_the_pool(step, serve, database_url):
    server = serve(step)

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

    error = server.post("/messages", json={"text": ""})
    assert error.status_code == 400
    assert error.headers["Content-Type"] == "application/json"
    assert "1 to 500" in error.json()["error"]


def test_flask_run_reads_engine_options_from_the_environment(step, serve):
    options = {"pool_size": 2, "max_overflow": 0}
    server = serve(step, FLASK_ENGINE_OPTIONS=json.dumps(options))

    status = server.get("/pool").json()

    assert status["size"] == 2
    assert status["options"]["max_overflow"] == 0
