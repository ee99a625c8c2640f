"""The harness itself: what the throwaway servers hand each test."""

import pytest
from sqlalchemy import create_engine
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from testbed.postgres import SPARE_PREFIX


@pytest.fixture
def backend():
    """PostgreSQL, whose databases the harness hands out again."""
    return "postgresql"


def test_a_postgresql_database_handed_out_again_is_as_empty_as_a_new_one(
    postgres, database_url
):
    # What a test may leave: a table, a setting of the database's own, and
    # a connection still open.
    name = make_url(database_url).database
    assert name.startswith(SPARE_PREFIX)
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE left_behind (id INTEGER)")
        connection.exec_driver_sql(
            f"ALTER DATABASE \"{name}\" SET idle_session_timeout = '1s'"
        )
    left_open = engine.connect()
    try:
        postgres.drop_database(database_url)

        # The same database comes out next, as a new one would be.
        assert postgres.create_database() == database_url
        fresh = create_engine(database_url, poolclass=NullPool)
        with fresh.connect() as connection:
            assert inspect(connection).get_table_names() == []
            timeout = connection.exec_driver_sql("SHOW idle_session_timeout")
            assert timeout.scalar() == "0"
        fresh.dispose()
        # The connection left open was ended.
        with pytest.raises(OperationalError, match="terminat"):
            left_open.exec_driver_sql("SELECT 1")
    finally:
        left_open.close()
        engine.dispose()
