"""The routes that use the database: the page's messages and the JSON API."""

from typing import Any

from flask import url_for
from sqlalchemy import delete
from sqlalchemy import select

from . import db
from .models import Message
from .web import MESSAGE_ID
from .web import bp
from .web import message_not_found
from .web import read_text
from .web import render_page


@bp.get("/")
def index() -> str:
    """Show the messages, a form to add one, and the live pool panel."""
    messages = db.get_session().scalars(select(Message).order_by(Message.id))
    return render_page(messages)


@bp.get("/messages")
def list_messages() -> list[dict[str, Any]]:
    """List the messages by id."""
    messages = db.get_session().scalars(select(Message).order_by(Message.id))
    return [message.to_dict() for message in messages]


@bp.post("/messages")
def create_message() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Add a message from a JSON body ``{"text": ...}``."""
    text = read_text()
    session = db.get_session()
    message = Message(text=text)
    session.add(message)
    session.commit()
    location = url_for(".get_message", message_id=message.id)
    return message.to_dict(), 201, {"Location": location}


@bp.get(f"/messages/{MESSAGE_ID}")
def get_message(message_id: int) -> dict[str, Any]:
    """Show one message."""
    return find_message(message_id).to_dict()


@bp.patch(f"/messages/{MESSAGE_ID}")
def update_message(message_id: int) -> dict[str, Any]:
    """Replace a message's text from a JSON body ``{"text": ...}``."""
    text = read_text()
    message = find_message(message_id)
    message.text = text
    db.get_session().commit()
    return message.to_dict()


@bp.delete(f"/messages/{MESSAGE_ID}")
def delete_message(message_id: int) -> tuple[str, int]:
    """Delete a message."""
    session = db.get_session()
    # One statement, so a message deleted meanwhile is simply not found.
    deleted = session.execute(delete(Message).where(Message.id == message_id))
    session.commit()
    if deleted.rowcount == 0:  # type: ignore[attr-defined]  # it is a CursorResult
        message_not_found(message_id)
    return "", 204


def find_message(message_id: int) -> Message:
    """Return the message with this id, or abort with 404."""
    message = db.get_session().get(Message, message_id)
    if message is None:
        message_not_found(message_id)
    return message
