"""Index audit_log by message_id: a message's history without a full scan.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 21:45:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade(engine_name: str) -> None:
    """Upgrade the database named engine_name: messages or audit."""
    globals()[f"upgrade_{engine_name}"]()


def downgrade(engine_name: str) -> None:
    """Downgrade the database named engine_name: messages or audit."""
    globals()[f"downgrade_{engine_name}"]()


def upgrade_messages() -> None:
    pass


def downgrade_messages() -> None:
    pass


def upgrade_audit() -> None:
    op.create_index(op.f("ix_audit_log_message_id"), "audit_log", ["message_id"])


def downgrade_audit() -> None:
    op.drop_index(op.f("ix_audit_log_message_id"), table_name="audit_log")
