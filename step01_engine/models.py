"""The one table, ``messages``, described with SQLAlchemy Core."""

from datetime import UTC
from datetime import datetime
from typing import Any

from sqlalchemy import Column
from sqlalchemy import DateTime
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import Row
from sqlalchemy import String
from sqlalchemy import Table

MAX_TEXT_LENGTH = 500


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


metadata = MetaData()

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("text", String(MAX_TEXT_LENGTH), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, default=utc_now),
)


def to_dict(message: Row[Any]) -> dict[str, Any]:
    """Return a row of ``messages`` as the API shows it."""
    # SQLite keeps no time zone: the value comes back naive, as utc_now()
    # wrote it. PostgreSQL's comes back in the session's time zone.
    created_at = message.created_at
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return {
        "id": message.id,
        "text": message.text,
        "created_at": created_at.astimezone(UTC).isoformat(),
    }
