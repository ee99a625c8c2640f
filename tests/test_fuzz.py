"""Whatever a client sends, every step answers with a deliberate status, never 500."""

import json

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from .steps import STEPS
from .steps import served

# Any code point, lone surrogates included, and NUL and a lone surrogate
# more often than chance would draw them: no database stores either.
CHARACTERS = st.characters(exclude_categories=()) | st.sampled_from(["\x00", "\ud800"])
TEXT = st.text(CHARACTERS)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)
BODIES = st.one_of(
    JSON_VALUES.map(json.dumps),
    st.fixed_dictionaries({"text": st.text(CHARACTERS, max_size=600)}).map(json.dumps),
    st.binary(max_size=200),
)
PATHS = st.one_of(
    st.sampled_from(["/", "/pool", "/messages", "/messages/1", "/messages/0"]),
    st.integers().map(lambda number: f"/messages/{number}"),
    st.text(max_size=20).map(lambda text: f"/messages/{text}"),
)
METHODS = st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"])
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", None]
)


# Examples per step and database: many runs of each test, over the same
# validation code, so each run can afford fewer.
@pytest.mark.slow
@pytest.mark.parametrize("step", served(STEPS))
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(method=METHODS, path=PATHS, body=BODIES, content_type=CONTENT_TYPES)
def test_no_request_gets_a_server_error(client, method, path, body, content_type):
    client.post("/messages", json={"text": "a message to find"})

    response = client.open(path, method=method, data=body, content_type=content_type)

    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert response.get_json()["error"]


@pytest.mark.slow
@pytest.mark.parametrize("step", served(STEPS))
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=st.text(CHARACTERS, max_size=600), method=st.sampled_from(["post", "patch"])
)
def test_any_text_is_stored_as_sent_or_refused_with_a_400(client, text, method):
    client.post("/messages", json={"text": "a message to change"})

    response = getattr(client, method)(
        "/messages" if method == "post" else "/messages/1", json={"text": text}
    )

    if response.status_code in (200, 201):
        assert response.get_json()["text"] == text
    else:
        assert response.status_code == 400, response.get_data(as_text=True)
        assert response.get_json()["error"]
