"""The ORM models of the two databases' tables, declared: the schema's source."""

from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar
from typing import TypeAlias

from sqlalchemy import Connection
from sqlalchemy import DateTime
from sqlalchemy import FromClause
from sqlalchemy import Identity
from sqlalchemy import Index
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import inspect
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

MAX_TEXT_LENGTH = 500

# The tables the app maps in each database; the migrations create them.
TABLES = {"messages": ("messages",), "audit": ("audit_log",)}

# Every constraint and index gets a name the migrations can refer to. An
# unnamed one gets the database's own name for it, which differs from one
# database to the next, and a revision cannot drop what it cannot name (on
# SQLite, where batch mode rebuilds the table, not even then). Alembic's
# documentation, "The Importance of Naming Constraints".
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# MariaDB's tables: InnoDB, and utf8mb4 whatever the database's default:
# MySQL's utf8 holds 3 bytes a character at most, and refuses an emoji. A
# mariadb+pymysql:// URL's dialect reads the mariadb_ keys only, and a
# mysql+pymysql:// one's the mysql_ keys only: both, so that either URL
# gets the same tables.
MARIADB_TABLE = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mariadb_engine": "InnoDB",
    "mariadb_charset": "utf8mb4",
}

# A time with its zone where the database keeps one (PostgreSQL); on
# MariaDB, DATETIME to the microsecond, in UTC, as on SQLite.
Timestamp = DateTime(timezone=True).with_variant(
    mysql.DATETIME(fsp=6), "mysql", "mariadb"
)


class utc_now(FunctionElement[datetime]):
    """The database's current time in UTC, as a column's server default."""

    type = DateTime()
    inherit_cache = True


@compiles(utc_now)
def _utc_now_default(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite's CURRENT_TIMESTAMP is UTC, to the second.
    return "CURRENT_TIMESTAMP"


@compiles(utc_now, "postgresql")
def _utc_now_postgresql(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(utc_now, "mysql")
@compiles(utc_now, "mariadb")
def _utc_now_mariadb(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    # An expression as a default: MariaDB 10.2.1 and later.
    return "(UTC_TIMESTAMP(6))"


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


# A declarative base for each database, each with a MetaData of its own:
# the Session sends each class's statements to the engine its base is bound
# to (db.py's binds), and each database's migrations compare it with its
# base's metadata.
class MessagesBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AuditBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Message(JsonColumns, MessagesBase):
    """A message, in the messages database."""

    __tablename__ = "messages"
    __table_args__ = MARIADB_TABLE

    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    text: Mapped[str] = mapped_column(String(MAX_TEXT_LENGTH))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=utc_now())


class AuditEntry(JsonColumns, AuditBase):
    """One write to the messages, in the audit database."""

    __tablename__ = "audit_log"
    __table_args__ = (
        # A message's history, found without reading the whole log.
        Index(None, "message_id"),
        MARIADB_TABLE,
    )

    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    action: Mapped[str] = mapped_column(String(10))
    message_id: Mapped[int]
    # The text written, or NULL for a delete.
    text: Mapped[str | None] = mapped_column(String(MAX_TEXT_LENGTH))
    at: Mapped[datetime] = mapped_column(Timestamp, server_default=utc_now())


# The names the code before this step types its model classes with: there,
# classes mapped at run time stood in for these.
MessageModel: TypeAlias = Message
AuditEntryModel: TypeAlias = AuditEntry


@dataclass(frozen=True)
class Models:
    """An app's model classes, and each database's declarative base."""

    bases: dict[str, type[DeclarativeBase]]
    Message: type[MessageModel]
    AuditEntry: type[AuditEntryModel]


def declare_models() -> Models:
    """Return the model classes, declared once for every app: no app maps
    them to a database, so all of them share the classes."""
    return Models(
        bases={"messages": MessagesBase, "audit": AuditBase},
        Message=Message,
        AuditEntry=AuditEntry,
    )


def metadata_of(models: Models) -> dict[str, MetaData]:
    """Return each database's MetaData: what its migrations must give it."""
    return {database: base.metadata for database, base in models.bases.items()}


def check_tables(database: str, connection: Connection) -> None:
    """Raise SchemaMissing unless the database has the tables of its models."""
    tables = TABLES[database]
    missing = [name for name in tables if not inspect(connection).has_table(name)]
    if missing:
        raise SchemaMissing(missing)
