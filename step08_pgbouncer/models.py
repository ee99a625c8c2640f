"""The ORM models of the two databases' tables, mapped from each database."""

from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

from sqlalchemy import Connection
from sqlalchemy import FromClause
from sqlalchemy import inspect
from sqlalchemy.ext.declarative import DeferredReflection
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped

MAX_TEXT_LENGTH = 500

# The tables the app maps in each database; init-db's schema files create
# them.
TABLES = {"messages": ("messages",), "audit": ("audit_log",)}


class SchemaMissing(Exception):
    """The database has not got the tables the app maps: init-db has not run."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(f"the database has no table {', '.join(missing)} yet")


class JsonColumns:
    """A mapped class that the API shows whole: each column its table has."""

    if TYPE_CHECKING:
        # For type checkers only: what the app's declarative base gives a
        # mapped class at run time, declared as DeclarativeBase declares it.
        __table__: ClassVar[FromClause]

        def __init__(self, **kw: Any) -> None: ...

    def to_dict(self) -> dict[str, Any]:
        """Return the row as the API shows it: each column of the table."""
        return {
            column.key: json_value(getattr(self, column.key))
            for column in inspect(type(self)).column_attrs
        }


def json_value(value: object) -> object:
    """Return a column's value as the API shows it: times in UTC."""
    if not isinstance(value, datetime):
        return value
    # SQLite keeps no time zone: the value comes back naive, in UTC as the
    # schema's default wrote it. PostgreSQL's comes back in the session's.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


class MessageModel(JsonColumns):
    """What type checkers know of every app's Message class: the columns of
    ``messages`` that the code uses."""

    if TYPE_CHECKING:
        # For type checkers only: at run time these come from the table.
        id: Mapped[int]
        text: Mapped[str]
        created_at: Mapped[datetime]


class AuditEntryModel(JsonColumns):
    """What type checkers know of every app's AuditEntry class: the columns
    of ``audit_log`` that the code uses."""

    if TYPE_CHECKING:
        id: Mapped[int]
        action: Mapped[str]
        message_id: Mapped[int]
        text: Mapped[str | None]
        at: Mapped[datetime]


@dataclass(frozen=True)
class Models:
    """An app's model classes, declared by declare_models()."""

    # The abstract base of each database's classes, by database.
    bases: dict[str, type[DeferredReflection]]
    Message: type[MessageModel]
    AuditEntry: type[AuditEntryModel]


def declare_models() -> Models:
    """Declare model classes of an app's own, to be mapped by map_models()."""

    # A base of their own for each app: a class is mapped once, to the
    # columns of the first database it was prepared against, so an app
    # factory (and each test's app) needs classes of its own. And a base for
    # each database: the Session sends each class's statements to the engine
    # its base is bound to (db.py's binds).
    class MessagesBase(DeclarativeBase):
        pass

    class AuditBase(DeclarativeBase):
        pass

    class ReflectedMessages(DeferredReflection, MessagesBase):
        __abstract__ = True

    class ReflectedAudit(DeferredReflection, AuditBase):
        __abstract__ = True

    class Message(MessageModel, ReflectedMessages):
        __tablename__ = "messages"

    class AuditEntry(AuditEntryModel, ReflectedAudit):
        __tablename__ = "audit_log"

    return Models(
        bases={"messages": ReflectedMessages, "audit": ReflectedAudit},
        Message=Message,
        AuditEntry=AuditEntry,
    )


def map_models(models: Models, database: str, connection: Connection) -> None:
    """Map one database's declared classes onto its tables as they are now."""
    tables = TABLES[database]
    missing = [name for name in tables if not inspect(connection).has_table(name)]
    if missing:
        raise SchemaMissing(missing)
    # Read the tables' columns, keys and defaults from the database, then
    # map each class onto its table.
    models.bases[database].prepare(connection)
