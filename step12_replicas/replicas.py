"""Reads from PostgreSQL standbys, writes to the primary, and read-your-writes.

A standby replays the primary's WAL a moment after the primary commits:
a read sent there right after a write may not see it. The app's Session
(RoutingSession) sends each statement to a server:

- writes, flushes, ``SELECT ... FOR UPDATE``, statements it cannot read
  (``text()``) and everything after the first write of a transaction go
  to the primary;
- other reads go to a standby that is up and has replayed the client's
  last write, else to the primary.

A client's last write is the WAL position the primary had reached after
its commit, which the app sets in a cookie (``wal_position``); a standby
whose replay has passed it has the write. Once the standby has, the
cookie is deleted, and the client's reads cost nothing more.
"""

import functools
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Response
from flask import after_this_request
from flask import current_app
from flask import has_request_context
from sqlalchemy import Connection
from sqlalchemy import Engine
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.orm import SessionTransaction
from sqlalchemy.sql import ClauseElement

# The cookie that holds a client's last write: the primary's WAL position
# after its commit, as PostgreSQL writes it ("0/3000148"). Kept at most
# this long: a standby that lags longer is down or broken.
POSITION_COOKIE = "wal_position"
POSITION_COOKIE_SECONDS = 300
POSITION = re.compile(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}")

# Where the primary's WAL has been inserted up to: past the commit record
# of every transaction committed so far, even with synchronous_commit off,
# where pg_current_wal_lsn() (written out) may still be behind it.
PRIMARY_POSITION = text("SELECT pg_current_wal_insert_lsn()::text")
# Whether a standby has replayed a position; a server that is no longer in
# recovery (a promoted standby) has everything it will ever have.
HAS_REPLAYED = text(
    "SELECT NOT pg_is_in_recovery()"
    " OR pg_last_wal_replay_lsn() >= CAST(:position AS pg_lsn)"
)

# Keys of Session.info.
WROTE = "replicas.wrote"  # this transaction wrote: stay on the primary
READS_ON = "replicas.reads_on"  # the engine this transaction reads from
COMMITTED_A_WRITE = "replicas.committed_a_write"  # the request wrote
READS = "replicas.reads"  # where this Session's reads went, and why
LAST_BIND = "replicas.last_bind"  # the engine of the statement under way


class Server:
    """A database server the app reads from: its engine, and whether it
    answered the last time it was asked."""

    def __init__(self, name: str, engine: Engine) -> None:
        self.name = name
        self.engine = engine
        # Until then, a standby that failed to connect is left alone.
        self.down_until = 0.0


class Routing:
    """Where a Session's statements go: the primary, and its standbys."""

    def __init__(
        self,
        primary: Engine,
        standbys: dict[str, Engine],
        retry_seconds: float,
        last_write: Callable[[], str | None],
    ) -> None:
        self.primary = primary
        self.standbys = [Server(name, engine) for name, engine in standbys.items()]
        self.retry_seconds = retry_seconds
        # The client's last write, from its cookie: None outside a request.
        self.last_write = last_write
        # Where this process's last reads went, and why (each Session keeps
        # its own in info[READS], which its page shows).
        self.last_reads: dict[str, str] = {"server": "none yet", "why": ""}
        self._lock = threading.Lock()

    def choose(self, session: Session) -> Engine:
        """Return the engine for a transaction's reads: a standby that
        answers and has the client's last write, else the primary."""
        position = self.last_write()
        why = "no standby configured"
        for standby in self.standbys:
            if standby.down_until > time.monotonic():
                why = f"{standby.name} is down, retried soon"
                continue
            try:
                # Connect here, in the Session's transaction, so that a
                # standby that is down costs a fallback, not a 503.
                connection = session.connection(bind_arguments={"bind": standby.engine})
                if position is not None and not has_replayed(connection, position):
                    why = f"{standby.name} has not replayed your last write yet"
                    continue
            except DBAPIError:
                with self._lock:
                    standby.down_until = time.monotonic() + self.retry_seconds
                why = f"{standby.name} did not answer"
                continue
            if position is not None and has_request_context():
                # The client's reads need not check from now on.
                after_this_request(functools.partial(delete_the_position, session))
            why = "it has your last write" if position else "no write of yours"
            self.note(session, standby.name, why)
            return standby.engine
        self.note(session, "primary", why)
        return self.primary

    def dropped(self, session: Session, engine: Engine) -> None:
        """A standby dropped a read's connection (it stopped, or restarted):
        leave it alone a while, and read the rest on the primary."""
        for standby in self.standbys:
            if standby.engine is engine:
                with self._lock:
                    standby.down_until = time.monotonic() + self.retry_seconds
                self.note(session, "primary", f"{standby.name} dropped the read")
        session.info[READS_ON] = self.primary

    def note(self, session: Session, server: str, why: str) -> None:
        """Record where a Session's reads went, and why."""
        session.info[READS] = self.last_reads = {"server": server, "why": why}


def has_replayed(connection: Connection, position: str) -> bool:
    """Say whether the server of ``connection`` has replayed ``position``."""
    return bool(connection.scalar(HAS_REPLAYED, {"position": position}))


def writes(clause: ClauseElement | None) -> bool:
    """Say whether a statement may write, or lock rows: anything but a
    plain SELECT (text() may say anything)."""
    if clause is None or not getattr(clause, "is_select", False):
        return True
    # SELECT ... FOR UPDATE locks rows, which a standby cannot.
    return getattr(clause, "_for_update_arg", None) is not None


class RoutingSession(Session):
    """A Session that sends reads to a standby and the rest to the primary."""

    def __init__(self, *args: Any, routing: Routing, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routing = routing

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: ClauseElement | None = None,
        bind: Engine | Connection | None = None,
        **kwargs: Any,
    ) -> Engine | Connection:
        engine = super().get_bind(mapper, clause=clause, bind=bind, **kwargs)
        self.info[LAST_BIND] = engine
        # Another database (step 6's audit log), or a bind asked for.
        if bind is not None or engine is not self.routing.primary:
            return engine
        if self._flushing or writes(clause):
            self.info[WROTE] = True
        if self.info.get(WROTE) or self.info.get(COMMITTED_A_WRITE):
            # From the first write on, the transaction reads on the primary
            # too: its own rows, flushed or not, are there only; and so does
            # the rest of the request once it has committed one (the
            # refresh of an object expired by the commit, for one).
            self.routing.note(self, "primary", "a write, or after one")
            return engine
        if READS_ON not in self.info:
            # Chosen once a transaction: its reads see one server's data.
            self.info[READS_ON] = self.routing.choose(self)
        reads_on: Engine = self.info[READS_ON]
        self.info[LAST_BIND] = reads_on
        return reads_on

    # Every statement of the ORM runs through one of these three (get(),
    # refreshes and lazy loads through execute()): a read whose standby
    # drops the connection under it (it stopped) runs again on the primary.
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._on_the_primary_if_dropped(super().execute, args, kwargs)

    def scalars(self, *args: Any, **kwargs: Any) -> Any:
        return self._on_the_primary_if_dropped(super().scalars, args, kwargs)

    def scalar(self, *args: Any, **kwargs: Any) -> Any:
        return self._on_the_primary_if_dropped(super().scalar, args, kwargs)

    def _on_the_primary_if_dropped(
        self, run: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return run(*args, **kwargs)
        except DBAPIError as error:
            engine = self.info.get(LAST_BIND)
            standbys = [standby.engine for standby in self.routing.standbys]
            if not error.connection_invalidated or engine not in standbys:
                raise
            assert engine is not None
            self.routing.dropped(self, engine)
            # A read only: the transaction wrote nothing, or it would read
            # on the primary already, where get_bind() now sends it.
            return run(*args, **kwargs)


@event.listens_for(RoutingSession, "after_commit")
def remember_a_committed_write(session: Session) -> None:
    """After a request's first commit that wrote, its response gives the
    client the primary's position; the rest of the request reads there."""
    if session.info.get(WROTE) and not session.info.get(COMMITTED_A_WRITE):
        session.info[COMMITTED_A_WRITE] = True
        if has_request_context():
            # Only the responses that need it pay for a cookie: no
            # after_request function runs on every read.
            after_this_request(functools.partial(give_the_position, session))


@event.listens_for(RoutingSession, "after_transaction_end")
def forget_the_transactions_route(
    session: Session, transaction: SessionTransaction
) -> None:
    """A new transaction chooses again: a write ends, a standby catches up."""
    if transaction.parent is None:
        session.info.pop(WROTE, None)
        session.info.pop(READS_ON, None)


def position_from(cookie: str | None) -> str | None:
    """Return a WAL position from the cookie, or None if there is none or
    it is not one (a client's to send, so checked before it reaches SQL)."""
    if cookie is None or not POSITION.fullmatch(cookie):
        return None
    return cookie


def give_the_position(session: Session, response: Response) -> Response:
    """Set the cookie to the primary's position after the request's write."""
    assert isinstance(session, RoutingSession)
    try:
        # A connection of its own: the Session's transaction may have failed
        # after the commit, and the write's answer must stand.
        with session.routing.primary.connect() as connection:
            position = connection.scalar(PRIMARY_POSITION)
    except DBAPIError as error:
        # The write is committed: its answer stands. The client's next
        # reads may be stale, and the log says why.
        current_app.logger.warning("no WAL position for the cookie", exc_info=error)
        return response
    response.set_cookie(
        POSITION_COOKIE,
        str(position),
        max_age=POSITION_COOKIE_SECONDS,
        httponly=True,
        samesite="Lax",
    )
    return response


def delete_the_position(session: Session, response: Response) -> Response:
    """Delete the cookie: a standby has the client's last write."""
    if not session.info.get(COMMITTED_A_WRITE):
        response.delete_cookie(POSITION_COOKIE, httponly=True, samesite="Lax")
    return response
