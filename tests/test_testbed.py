"""The harness itself: what the throwaway servers hand each test."""

import pathlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pymysql
import pytest
from sqlalchemy import create_engine
from sqlalchemy import inspect
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from testbed import mariadb
from testbed.loopback import free_port
from testbed.postgres import HOW_TO_GET_POSTGRES
from testbed.postgres import SPARE_PREFIX
from testbed.postgres import find_binaries
from testbed.replicas import Replication

from .conftest import skip_or_fail


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


def test_mariadb_servers_bootstrapped_at_once_each_start():
    # The suite's workers each start one at the same moment. Sharing /tmp,
    # their bootstraps removed each other's temporary tables, and one in
    # four or so failed: "Unknown table 'mysql.tmp_user_sys'".
    binaries = mariadb.find_binaries()
    if binaries is None:
        pytest.skip(mariadb.HOW_TO_GET_MARIADB)
    with ThreadPoolExecutor(6) as executor:
        starting = [
            executor.submit(mariadb.Instance, binaries, free_port()) for _ in range(6)
        ]
    servers = []
    try:
        for future in starting:
            if future.exception() is None:
                servers.append(future.result())
        assert [future.exception() for future in starting] == [None] * 6
        for server in servers:
            connection = pymysql.connect(
                host="127.0.0.1", port=server.port, user="root"
            )
            with connection.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM mysql.user")
                assert cursor.fetchone()[0] > 0
            connection.close()
    finally:
        for server in servers:
            server.destroy()


def test_a_free_port_is_one_no_outgoing_connection_can_take():
    # The kernel gives every outgoing connection a local port from this
    # range; a server told to listen on one of them may find it taken.
    ephemeral = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    lowest, highest = map(int, ephemeral.split())
    ports = [free_port() for _ in range(20)]
    assert all(not lowest <= port <= highest for port in ports), ports
    assert len(set(ports)) == len(ports)


def test_a_free_port_is_not_one_a_socket_holds():
    # Hold the ports just after the last one handed out, where the next
    # candidates are.
    last = free_port()
    held = []
    try:
        for port in range(last + 1, last + 6):
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", port))
        assert free_port() not in range(last + 1, last + 6)
    finally:
        for sock in held:
            sock.close()


@pytest.mark.slow
def test_a_standby_follows_its_primary_read_only_and_lags_only_when_paused():
    bindir = find_binaries()
    if bindir is None:
        skip_or_fail(HOW_TO_GET_POSTGRES)
    replication = Replication(bindir)
    try:
        url = replication.create_database()
        primary = create_engine(url, poolclass=NullPool)
        standby = create_engine(replication.standby.url_of(url), poolclass=NullPool)
        count = text("SELECT count(*) FROM notes")
        with primary.begin() as connection:
            connection.execute(text("CREATE TABLE notes (id INTEGER)"))
            connection.execute(text("INSERT INTO notes VALUES (1)"))
        replication.standby.wait_for_replay()
        with standby.connect() as connection:
            assert connection.execute(count).scalar() == 1
            # A standby, read-only: the error a misrouted write meets.
            in_recovery = connection.execute(text("SELECT pg_is_in_recovery()"))
            assert in_recovery.scalar() is True
            with pytest.raises(
                DBAPIError,
                match="cannot execute INSERT in a read-only transaction",
            ):
                connection.execute(text("INSERT INTO notes VALUES (2)"))

        # Paused, it lags by what the primary commits meanwhile, for as
        # long as the test wants; resumed, it catches up.
        replication.standby.pause_replay()
        with primary.begin() as connection:
            connection.execute(text("INSERT INTO notes VALUES (2)"))
        time.sleep(0.5)
        with standby.connect() as connection:
            assert connection.execute(count).scalar() == 1
        replication.standby.resume_replay()
        replication.standby.wait_for_replay()
        with standby.connect() as connection:
            assert connection.execute(count).scalar() == 2

        # Promoted, it takes writes.
        replication.standby.promote()
        with standby.begin() as connection:
            connection.execute(text("INSERT INTO notes VALUES (3)"))
            assert connection.execute(count).scalar() == 3
        primary.dispose()
        standby.dispose()
    finally:
        replication.destroy()
    # Both servers are gone, their folders too.
    assert not pathlib.Path(replication.primary.folder).exists()
    assert not pathlib.Path(replication.standby.folder).exists()
