"""Faults a test injects through SQLAlchemy's events: connections lost as a
server would lose them, and rows deleted by another request meanwhile."""

from sqlalchemy import event
from sqlalchemy import text


def lose_connection_before(engine, statement_start):
    """Close the DBAPI connection under the next statement that starts so.

    The statement then fails as it would on a connection the server dropped
    in the middle of a request: SQLAlchemy sees a disconnect. Returns the
    list of statements it closed the connection under: one, once it has.
    """

    closed = []

    def close_connection(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith(statement_start) and not closed:
            conn.connection.dbapi_connection.close()
            closed.append(statement)

    event.listen(engine, "before_cursor_execute", close_connection)
    return closed


def lose_connection_at_next_rollback(engine):
    """Close the DBAPI connection just before the next rollback is sent.

    As if the server went away after the request's last statement: the
    rollback that teardown sends fails, on a disconnect.
    """

    def close_connection(conn):
        conn.connection.dbapi_connection.close()

    event.listen(engine, "rollback", close_connection, once=True)


def drop_next_returned_connection(engine):
    """Close the next connection returned to the pool, as a server would.

    It waits in the pool, dead, for the next checkout: what an idle timeout
    or a server restart leaves behind.
    """
    event.listen(
        engine.pool,
        "checkin",
        lambda dbapi_connection, record: dbapi_connection.close(),
        once=True,
    )


def delete_elsewhere_before(engine, statement_start, message_id):
    """Delete a message through another connection just before a statement.

    As if another request deleted it while this one ran: after this
    request read the row and before it wrote.
    """
    deleted = []

    def delete_first(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith(statement_start) and not deleted:
            deleted.append(statement)
            with engine.begin() as other:
                other.execute(
                    text("DELETE FROM messages WHERE id = :id"), {"id": message_id}
                )

    event.listen(engine, "before_cursor_execute", delete_first)
