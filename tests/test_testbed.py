"""The harness itself: what the throwaway servers hand each test."""

import pathlib
import socket
from concurrent.futures import ThreadPoolExecutor

import pymysql
import pytest
from sqlalchemy import create_engine
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from testbed import mariadb
from testbed.loopback import free_port
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
