"""The routes that use the database: the page's messages and the JSON API."""

from typing import Any

from flask import request
from flask import url_for
from sqlalchemy import delete
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import db
from . import helpers
from .models import MessageModel
from .web import MESSAGE_ID
from .web import bp
from .web import message_not_found
from .web import read_text
from .web import render_page


@bp.get("/")
def index() -> str:
    """Show the messages, a form to add one, and the live pool panel."""
    Message = db.get_models().Message
    # ?page=N, 20 messages a page, linked from iter_pages().
    pagination = helpers.paginate(select(Message).order_by(Message.id))
    return render_page(
        pagination.items,
        pagination=pagination,
        columns=Message.__table__.columns.keys(),
    )


@bp.get("/messages")
async def list_messages() -> (
    list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, str]]
):
    """List the messages by id, from an async view: all of them, or one page
    with ?page=N&per_page=M."""
    # It runs in an event loop made for this call (async_views.py); with
    # Flask's default, on a thread made for it too: the Session is still
    # the request's, since it belongs to the app context.
    Message = db.get_models().Message
    by_id = select(Message).order_by(Message.id)
    if "page" not in request.args and "per_page" not in request.args:
        return [message.to_dict() for message in db.get_session().scalars(by_id)]
    # The body stays a list, of one page now; where the others are travels
    # in the headers: the total, and links to the first, previous, next and
    # last pages (RFC 8288), as GitHub's API sends them.
    pagination = helpers.paginate(by_id, max_per_page=100)
    return [message.to_dict() for message in pagination], {
        "X-Total-Count": str(pagination.total),
        "Link": helpers.link_header(pagination, ".list_messages"),
    }


@bp.post("/messages")
def create_message() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Add a message from a JSON body ``{"text": ...}``."""
    text = read_text()
    session = db.get_session()
    message = db.get_models().Message(text=text)
    session.add(message)
    # The insert first, for the new message's id, then its audit entry.
    session.flush()
    record(session, "create", message.id, text)
    # One commit, two databases: each commits its own transaction, one
    # after the other, so a failure between the two leaves one written.
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
    session = db.get_session()
    record(session, "update", message_id, text)
    session.commit()
    return message.to_dict()


@bp.delete(f"/messages/{MESSAGE_ID}")
def delete_message(message_id: int) -> tuple[str, int]:
    """Delete a message."""
    Message = db.get_models().Message
    session = db.get_session()
    # Held until the commit, so that the signals name it: the Session tells
    # them of a row it holds (weakly) when a DELETE removes it.
    message = find_message(message_id)
    # One statement, so a message deleted meanwhile is simply not found.
    # session.delete() would not notice: the ORM only warns when its DELETE
    # matches no row.
    deleted = session.execute(delete(Message).where(Message.id == message.id))
    if deleted.rowcount == 0:  # type: ignore[attr-defined]  # it is a CursorResult
        message_not_found(message_id)
    record(session, "delete", message_id)
    session.commit()
    return "", 204


@bp.get("/audit")
def list_audit_log() -> list[dict[str, Any]]:
    """List the audit log of every write, from the audit database, by id."""
    AuditEntry = db.get_models().AuditEntry
    entries = db.get_session().scalars(select(AuditEntry).order_by(AuditEntry.id))
    return [entry.to_dict() for entry in entries]


def record(
    session: Session, action: str, message_id: int, text: str | None = None
) -> None:
    """Add a write's entry to the audit log, bound for the audit database."""
    # Write the message first, then its entry, so that every request locks
    # the two databases in the same order. SQLite locks a whole database
    # for each write: two requests locking them in opposite orders would
    # each wait for the other until the busy timeout, then fail.
    session.flush()
    entry = db.get_models().AuditEntry(action=action, message_id=message_id, text=text)
    session.add(entry)


def find_message(message_id: int) -> MessageModel:
    """Return the message with this id, or abort with 404."""
    return helpers.get_or_404(
        db.get_models().Message,
        message_id,
        description=f"message {message_id} not found",
    )
