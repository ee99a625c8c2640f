"""The blueprint, the page, ``/pool``, and the API's validation and errors.

The same in every step: what a step changes is in its views.py, which adds
the routes that use the database to this blueprint.
"""

import pathlib
from collections.abc import Iterable
from typing import Any
from typing import NoReturn

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import render_template
from flask import request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import DataError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from . import monitor
from .models import MAX_TEXT_LENGTH

bp = Blueprint("messages", __name__)

# The largest id an INTEGER column holds on every database.
MAX_MESSAGE_ID = 2**31 - 1
# A message id in a route's URL, read by MessageIdConverter.
MESSAGE_ID = "<message_id:message_id>"
# Every step package beside this one, for the page's navigation: found on
# disk once, rather than imported, since no step depends on another.
ALL_STEPS = sorted(
    path.name
    for path in pathlib.Path(__file__).resolve().parent.parent.glob("step[0-9][0-9]_*")
    if (path / "__init__.py").is_file()
)


class MessageIdConverter(IntegerConverter):
    """Read a message id from a URL; one larger than any id is not found."""

    def to_python(self, value: str) -> int:
        # Passed on, a larger id would make the driver raise (SQLite:
        # "Python int too large to convert") instead of finding no message.
        # Werkzeug's int(max=...) would answer 405 to PATCH and DELETE, since
        # it fails after the method has matched; aborting here answers 404,
        # as the URL is matched, which costs a request nothing measurable.
        message_id: int = super().to_python(value)
        if message_id > MAX_MESSAGE_ID:
            message_not_found(message_id)
        return message_id


# Before the routes that use it: a blueprint runs these as it registers.
bp.record_once(
    lambda state: state.app.url_map.converters.update(message_id=MessageIdConverter)
)


def message_not_found(message_id: int) -> NoReturn:
    """Abort with 404: no message has this id."""
    abort(404, f"message {message_id} not found")


def render_page(
    messages: Iterable[Any], database_error: str | None = None, **context: Any
) -> str:
    """Render the page: the messages, the form, the pool panel, the steps."""
    return render_template(
        "index.html",
        messages=messages,
        database_error=database_error,
        other_engines=list(current_app.extensions["engines"])[1:],
        steps=ALL_STEPS,
        this_step=__package__,
        **context,
    )


@bp.get("/pool")
def pool() -> dict[str, Any]:
    """Show what the app's connection pools hold right now."""
    return monitor.pool_status()


def read_text() -> str:
    """Return the valid ``text`` of the request's JSON body, or abort with 400."""
    if not request.is_json:
        abort(415, "send a JSON body with Content-Type: application/json")
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        # json.loads gives up on very deeply nested arrays this way.
        body = None
    if not isinstance(body, dict) or body.keys() != {"text"}:
        abort(400, 'the body must be a JSON object with one key, "text"')
    text = body["text"]
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT_LENGTH:
        abort(400, f'"text" must be a string of 1 to {MAX_TEXT_LENGTH} characters')
    if "\x00" in text:
        # PostgreSQL cannot store NUL in a text column.
        abort(400, '"text" must not contain NUL characters')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # JSON can carry lone surrogates ("\ud800") that no database stores.
        abort(400, '"text" must be valid Unicode, without lone surrogates')
    return text


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> ResponseReturnValue:
    """Answer every HTTP error as JSON ``{"error": ...}``."""
    # Flask passes on an error without a code (None) before any handler: the
    # 500 is for the type checker, and never sent.
    return {"error": error.description}, error.code or 500


@bp.app_errorhandler(StaleDataError)
def deleted_meanwhile(error: StaleDataError) -> ResponseReturnValue:
    """Answer 404 when another request deleted the message being updated."""
    # The row was there when this request read it, and gone when the ORM
    # wrote to it. Step 1's Core statements find no row instead.
    return {"error": "the message was deleted by another request"}, 404


@bp.app_errorhandler(DataError)
def value_refused(error: DataError) -> ResponseReturnValue:
    """Answer 422 when the database refuses a value that read_text() let by."""
    # A column narrower than the API's rules: MariaDB's 3-byte utf8 refuses
    # an emoji ("Incorrect string value"). Nothing was written, and trying
    # again would fail again: a client error, not 503.
    current_app.logger.warning("value refused by the database", exc_info=error)
    reason = str(error.orig).partition("\n")[0]
    return {"error": f"the database cannot store this text: {reason}"}, 422


@bp.app_errorhandler(SQLAlchemyError)
def database_unavailable(error: SQLAlchemyError) -> ResponseReturnValue:
    """Answer 503 when the database cannot serve the request, and log why."""
    # A lost or refused connection, no pooled connection free within
    # pool_timeout, a failed transaction that nothing rolled back yet, or a
    # result that is not the query's (one connection shared across a fork):
    # the request may succeed if tried again, so 503, not 500.
    current_app.logger.warning("database unavailable", exc_info=error)
    reason = str(error).partition("\n")[0]
    return unavailable(f"database unavailable ({type(error).__name__}): {reason}")


@bp.app_errorhandler(Exception)
def unexpected_error(error: Exception) -> ResponseReturnValue:
    """Answer 503 for an error that no handler above expects, and log it."""
    if current_app.testing or current_app.debug:
        # Tests and the debugger see the error itself, as Flask shows them
        # any error that no handler takes.
        raise error
    # A connection that another process reads too hands this one another
    # query's rows, and the code that reads them fails in any way at all
    # (IndexError, TypeError, NotImplementedError). The log gets the
    # traceback; the client, that trying again may succeed.
    current_app.logger.error("request failed", exc_info=error)
    return unavailable(f"request failed ({type(error).__name__}): try again")


def unavailable(message: str) -> ResponseReturnValue:
    """Answer 503 with a message: the page for the page, JSON otherwise."""
    if request.endpoint == "messages.index":
        # The page, not JSON: its pool panel goes on showing what happens.
        return render_page([], database_error=message), 503
    return {"error": message}, 503
