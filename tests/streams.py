"""Three ways to stream the messages, added to a step's app by the tests.

Flask 3.1 runs the app context's teardown twice for a response streamed
with ``stream_with_context``: as the view returns, before the first line
is sent, and again when the stream ends, having pushed the same context
again for it.

- ``/stream/from-the-view``: the rows of a query the view ran, fetched as
  they are sent: the view's Session is closed by then, and the stream
  fails at its first row.
- ``/stream/as-read``: the stream runs its query itself, through the
  Session of the context pushed again for it: that Session, and its
  connection, live until the last line is out or the body is closed.
- ``/stream/read-first``: the view reads what the stream needs and closes
  the Session; the stream holds no connection.

Each line waits ``PAUSE`` seconds, as a slow client or a large row would
make it. ``/stream/ended`` says how each stream ended: after how many of
its lines (fewer than it had: it was closed early, a client that went away
and a server that noticed).
"""

import importlib
import time

from flask import stream_with_context
from sqlalchemy import select

PAUSE = 0.05


def add_streams(app):
    """Add the three streaming routes, and the report of how streams ended."""
    db = importlib.import_module(f"{app.import_name}.db")
    ended = []

    def lines(texts):
        sent = 0
        try:
            for text in texts:
                yield f"{text}\n"
                sent += 1
                time.sleep(PAUSE)
        finally:
            ended.append(sent)

    def texts_in_order():
        Message = db.get_models().Message
        return db.get_session().scalars(select(Message.text).order_by(Message.id))

    @app.get("/stream/from-the-view")
    def stream_from_the_views_session():
        Message = db.get_models().Message
        messages = db.get_session().scalars(select(Message).order_by(Message.id))
        return stream_with_context(lines(message.text for message in messages))

    @app.get("/stream/as-read")
    def stream_as_read():
        def texts():
            # Runs as the stream is sent, in the context pushed again for it.
            yield from texts_in_order()

        return stream_with_context(lines(texts()))

    @app.get("/stream/read-first")
    def stream_after_reading():
        texts = list(texts_in_order())
        # The rows are read: give the connection back before streaming them.
        db.get_session().close()
        return stream_with_context(lines(texts))

    @app.get("/stream/ended")
    def streams_ended():
        return {"lines_sent": ended}
