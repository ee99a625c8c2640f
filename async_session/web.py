"""The blueprint, and the API's validation and errors: step 9's, as JSON."""

from typing import NoReturn

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import DataError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from .models import MAX_TEXT_LENGTH

bp = Blueprint("messages", __name__)

# The largest id an INTEGER column holds on every database.
MAX_MESSAGE_ID = 2**31 - 1
# A message id in a route's URL, read by MessageIdConverter.
MESSAGE_ID = "<message_id:message_id>"


class MessageIdConverter(IntegerConverter):
    """Read a message id from a URL; one larger than any id is not found."""

    def to_python(self, value: str) -> int:
        message_id: int = super().to_python(value)
        if message_id > MAX_MESSAGE_ID:
            message_not_found(message_id)
        return message_id


bp.record_once(
    lambda state: state.app.url_map.converters.update(message_id=MessageIdConverter)
)


def message_not_found(message_id: int) -> NoReturn:
    """Abort with 404: no message has this id."""
    abort(404, f"message {message_id} not found")


def read_text() -> str:
    """Return the valid ``text`` of the request's JSON body, or abort with 400."""
    if not request.is_json:
        abort(415, "send a JSON body with Content-Type: application/json")
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    if not isinstance(body, dict) or body.keys() != {"text"}:
        abort(400, 'the body must be a JSON object with one key, "text"')
    text = body["text"]
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT_LENGTH:
        abort(400, f'"text" must be a string of 1 to {MAX_TEXT_LENGTH} characters')
    if "\x00" in text:
        abort(400, '"text" must not contain NUL characters')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        abort(400, '"text" must be valid Unicode, without lone surrogates')
    return text


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> ResponseReturnValue:
    """Answer every HTTP error as JSON ``{"error": ...}``."""
    return {"error": error.description}, error.code or 500


@bp.app_errorhandler(DataError)
def value_refused(error: DataError) -> ResponseReturnValue:
    """Answer 422 when the database refuses a value that read_text() let by."""
    current_app.logger.warning("value refused by the database", exc_info=error)
    reason = str(error.orig).partition("\n")[0]
    return {"error": f"the database cannot store this text: {reason}"}, 422


@bp.app_errorhandler(SQLAlchemyError)
def database_unavailable(error: SQLAlchemyError) -> ResponseReturnValue:
    """Answer 503 when the database cannot serve the request, and log why."""
    current_app.logger.warning("database unavailable", exc_info=error)
    reason = str(error).partition("\n")[0]
    return unavailable(f"database unavailable ({type(error).__name__}): {reason}")


@bp.app_errorhandler(Exception)
def unexpected_error(error: Exception) -> ResponseReturnValue:
    """Answer 503 for an error that no handler above expects, and log it."""
    if current_app.testing or current_app.debug:
        raise error
    # The "pooled" pattern's driver errors, for one, are not SQLAlchemy's:
    # the log gets the traceback; the client, that trying again may succeed.
    current_app.logger.error("request failed", exc_info=error)
    return unavailable(f"request failed ({type(error).__name__}): {error}")


def unavailable(message: str) -> ResponseReturnValue:
    """Answer 503 with a JSON message."""
    return {"error": message}, 503
