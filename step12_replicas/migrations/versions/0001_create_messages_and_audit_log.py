"""Create messages, and audit_log in the audit database.

Revision ID: 0001
Revises:
Create Date: 2026-12-07 21:40:00

"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The times, as models.py declares them: with a time zone on PostgreSQL, to
# the microsecond on MariaDB. Written out rather than imported, so that this
# revision stays what it was when the models change.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(
    mysql.DATETIME(fsp=6), "mysql", "mariadb"
)
# The database's time in UTC, by database: models.py's utc_now().
UTC_NOW = {
    "postgresql": "now()",
    "mariadb": "(UTC_TIMESTAMP(6))",
    "mysql": "(UTC_TIMESTAMP(6))",
    "sqlite": "CURRENT_TIMESTAMP",
}
# InnoDB and utf8mb4 for either URL's dialect: mysql+pymysql:// reads the
# mysql_ keys, mariadb+pymysql:// the mariadb_ ones.
MARIADB_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mariadb_engine": "InnoDB",
    "mariadb_charset": "utf8mb4",
}


def upgrade(engine_name: str) -> None:
    """Upgrade the database named engine_name: messages or audit."""
    globals()[f"upgrade_{engine_name}"]()


def downgrade(engine_name: str) -> None:
    """Downgrade the database named engine_name: messages or audit."""
    globals()[f"downgrade_{engine_name}"]()


def utc_now() -> sa.TextClause:
    """Return the server default for a time: the database's UTC now."""
    return sa.text(UTC_NOW[op.get_bind().dialect.name])


def upgrade_messages() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), sa.Identity(), nullable=False),
        sa.Column("text", sa.String(length=500), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=utc_now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        **MARIADB_TABLE,
    )


def downgrade_messages() -> None:
    op.drop_table("messages")


def upgrade_audit() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), sa.Identity(), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.String(length=500), nullable=True),
        sa.Column("at", TIMESTAMP, server_default=utc_now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        **MARIADB_TABLE,
    )


def downgrade_audit() -> None:
    op.drop_table("audit_log")
