"""The Session class: step 10's sessionmaker() makes SQLAlchemy's own."""

from sqlalchemy.orm import Session

__all__ = ["Session"]
