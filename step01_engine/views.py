"""The routes that use the database: the page's messages and the JSON API."""

from typing import Any

from flask import url_for
from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update

from . import db
from .models import messages
from .models import to_dict
from .web import MESSAGE_ID
from .web import bp
from .web import message_not_found
from .web import read_text
from .web import render_page


@bp.get("/")
def index() -> str:
    """Show the messages, a form to add one, and the live pool panel."""
    with db.get_engine().connect() as connection:
        rows = connection.execute(select(messages).order_by(messages.c.id)).all()
    return render_page(rows)


@bp.get("/messages")
def list_messages() -> list[dict[str, Any]]:
    """List the messages by id."""
    with db.get_engine().connect() as connection:
        rows = connection.execute(select(messages).order_by(messages.c.id)).all()
    return [to_dict(row) for row in rows]


@bp.post("/messages")
def create_message() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Add a message from a JSON body ``{"text": ...}``."""
    text = read_text()
    # begin() commits when the block ends, or rolls back if it raises.
    with db.get_engine().begin() as connection:
        row = connection.execute(
            insert(messages).values(text=text).returning(messages)
        ).one()
    location = url_for(".get_message", message_id=row.id)
    return to_dict(row), 201, {"Location": location}


@bp.get(f"/messages/{MESSAGE_ID}")
def get_message(message_id: int) -> dict[str, Any]:
    """Show one message."""
    statement = select(messages).where(messages.c.id == message_id)
    with db.get_engine().connect() as connection:
        row = connection.execute(statement).one_or_none()
    return to_dict(found(row, message_id))


@bp.patch(f"/messages/{MESSAGE_ID}")
def update_message(message_id: int) -> dict[str, Any]:
    """Replace a message's text from a JSON body ``{"text": ...}``."""
    text = read_text()
    where = messages.c.id == message_id
    with db.get_engine().begin() as connection:
        # MariaDB has no UPDATE ... RETURNING: the UPDATE's row lock keeps the
        # message, if there is one, for the SELECT that reads it back.
        connection.execute(update(messages).where(where).values(text=text))
        row = connection.execute(select(messages).where(where)).one_or_none()
    return to_dict(found(row, message_id))


@bp.delete(f"/messages/{MESSAGE_ID}")
def delete_message(message_id: int) -> tuple[str, int]:
    """Delete a message."""
    statement = delete(messages).where(messages.c.id == message_id)
    with db.get_engine().begin() as connection:
        row = connection.execute(statement.returning(messages.c.id)).one_or_none()
    found(row, message_id)
    return "", 204


def found(row: Any, message_id: int) -> Any:
    """Return the row if there is one, or abort with 404."""
    if row is None:
        message_not_found(message_id)
    return row
