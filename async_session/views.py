"""The routes: the JSON API as async views on an AsyncSession, the page, /pool."""

from typing import Any

from flask import current_app
from flask import url_for
from markupsafe import escape
from sqlalchemy import select

from . import db
from . import monitor
from .models import Message
from .web import MESSAGE_ID
from .web import bp
from .web import message_not_found
from .web import read_text

PAGE = """<!doctype html>
<title>AsyncSession in Flask</title>
<h1>AsyncSession in Flask: {pattern}</h1>
<p>The messages API (<a href="{messages}">GET /messages</a>, POST /messages)
runs as async views on an AsyncSession, with the ASYNC_PATTERN
<code>{pattern}</code>. docs/async.md says what each pattern costs.</p>
<p><a href="{pool}">/pool</a>, when this page was made:</p>
<pre>{status}</pre>
"""


@bp.get("/")
def index() -> str:
    """Say which pattern runs, and show the pool's state."""
    status = monitor.pool_status()
    return PAGE.format(
        pattern=escape(current_app.config["ASYNC_PATTERN"]),
        messages=url_for(".list_messages"),
        pool=url_for(".pool"),
        status=escape("\n".join(f"{key}: {value}" for key, value in status.items())),
    )


@bp.get("/pool")
def pool() -> dict[str, Any]:
    """Show what the app's engines hold right now."""
    return monitor.pool_status()


@bp.get("/messages")
async def list_messages() -> list[dict[str, Any]]:
    """List the messages by id."""
    messages = await db.get_session().scalars(select(Message).order_by(Message.id))
    return [message.to_dict() for message in messages]


@bp.post("/messages")
async def create_message() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Add a message from a JSON body ``{"text": ...}``."""
    text = read_text()
    session = db.get_session()
    message = Message(text=text)
    session.add(message)
    await session.commit()
    location = url_for(".get_message", message_id=message.id)
    return message.to_dict(), 201, {"Location": location}


@bp.get(f"/messages/{MESSAGE_ID}")
async def get_message(message_id: int) -> dict[str, Any]:
    """Show one message."""
    message = await db.get_session().get(Message, message_id)
    if message is None:
        message_not_found(message_id)
    return message.to_dict()
