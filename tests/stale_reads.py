"""Stale reads: a transaction left open sees the database as it was."""

from sqlalchemy import event
from sqlalchemy import text


def read_from_snapshots(engine):
    """Make the engine's transactions read from a snapshot.

    A transaction then sees the database as it was at its first read, as
    MariaDB's and MySQL's do by default (REPEATABLE READ). PostgreSQL does
    so at REPEATABLE READ. SQLite does in WAL mode, once a transaction
    really begins: by itself, Python's sqlite3 starts none for a SELECT, so
    the engine emits BEGIN, the recipe of SQLAlchemy's SQLite dialect
    documentation ("Serializable isolation / Savepoints / Transactional
    DDL").
    """
    if engine.dialect.name == "mariadb":
        # Its default isolation level already (tests/test_mariadb.py).
        return
    if engine.dialect.name == "postgresql":

        def on_begin(connection):
            connection.exec_driver_sql(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
            )

    else:

        def on_connect(dbapi_connection, connection_record):
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

        def on_begin(connection):
            connection.exec_driver_sql("BEGIN")

        event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)


def change_text_elsewhere(engine, message_id, new_text):
    """Change a message through a connection of its own, as another process would."""
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE messages SET text = :text WHERE id = :id"),
            {"text": new_text, "id": message_id},
        )


def read_again_after_a_change_elsewhere(client):
    """Read a message, change it through another connection, read it again.

    Return the text the second read sees: "original" or "changed". Reads
    come from snapshots, so a transaction still open from the first read
    would serve the original text.
    """
    engine = client.application.extensions["engine"]
    read_from_snapshots(engine)
    message = client.post("/messages", json={"text": "original"}).get_json()
    assert client.get(f"/messages/{message['id']}").get_json()["text"] == "original"

    change_text_elsewhere(engine, message["id"], "changed")

    return client.get(f"/messages/{message['id']}").get_json()["text"]
