"""The ORM model of the one table, ``messages``: step 4's, unchanged."""

from datetime import UTC
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

MAX_TEXT_LENGTH = 500


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(MAX_TEXT_LENGTH))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utc_now
    )

    def to_dict(self) -> dict[str, Any]:
        """Return the message as the API shows it."""
        # SQLite keeps no time zone: the value comes back naive, as utc_now()
        # wrote it. PostgreSQL's comes back in the session's time zone.
        created_at = self.created_at
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        return {
            "id": self.id,
            "text": self.text,
            "created_at": created_at.astimezone(UTC).isoformat(),
        }
