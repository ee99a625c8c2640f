"""Flask-SQLAlchemy 3.1's helpers, by hand, with its names and arguments.

A Flask-SQLAlchemy app's ``db.paginate(...)``, ``db.get_or_404(...)``,
``db.first_or_404(...)`` and ``db.one_or_404(...)`` become
``helpers.paginate(...)`` and so on; ``get_recorded_queries()``,
``models_committed`` and ``before_models_committed`` keep their names.
init_app() switches on what needs the app: recording the queries when
``RECORD_QUERIES`` is true, the commit signals, and ``flask shell``'s names.
"""

import dataclasses
import math
import sys
from collections.abc import Iterator
from time import perf_counter
from types import FrameType
from typing import Any
from typing import TypeVar

from blinker import Namespace
from flask import Flask
from flask import abort
from flask import current_app
from flask import g
from flask import has_app_context
from flask import request
from flask import url_for
from sqlalchemy import Connection
from sqlalchemy import Select
from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import inspect
from sqlalchemy import select as select_
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.engine.interfaces import ExecutionContext
from sqlalchemy.exc import MultipleResultsFound
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session
from sqlalchemy.orm import lazyload

from . import db

# The extension's defaults: page 1 of 20 items outside a request, or when
# the request names no page.
DEFAULT_PAGE, DEFAULT_PER_PAGE = 1, 20

# get_or_404() returns an instance of the class it is given, whichever it is.
T = TypeVar("T")


def paginate(
    select: Select[Any],
    *,
    page: int | None = None,
    per_page: int | None = None,
    max_per_page: int | None = None,
    error_out: bool = True,
    count: bool = True,
) -> "Pagination":
    """Return a page of the statement's rows, read from the request's
    ``page`` and ``per_page`` unless given, as db.paginate() does."""
    return Pagination(
        select, page, per_page, max_per_page, error_out=error_out, count=count
    )


class Pagination:
    """One page of a select statement's rows, and where it is among the others."""

    def __init__(
        self,
        select: Select[Any],
        page: int | None,
        per_page: int | None,
        max_per_page: int | None,
        *,
        error_out: bool,
        count: bool,
    ) -> None:
        self._select = select
        self.page, self.per_page = page_and_size(
            page, per_page, max_per_page, error_out
        )
        self.max_per_page = max_per_page
        session = db.get_session()
        offset = (self.page - 1) * self.per_page
        limited = select.limit(self.per_page).offset(offset)
        self.items: list[Any] = list(session.execute(limited).unique().scalars())
        if not self.items and self.page != 1 and error_out:
            abort(404, f"page {self.page} has no items")
        self.total: int | None = count_rows(session, select) if count else None

    @property
    def first(self) -> int:
        """The number of the page's first item, from 1; 0 on an empty page."""
        return (self.page - 1) * self.per_page + 1 if self.items else 0

    @property
    def last(self) -> int:
        """The number of the page's last item; 0 on an empty page."""
        return max(self.first, self.first + len(self.items) - 1)

    @property
    def pages(self) -> int:
        """How many pages there are: 0 with no items, or no count."""
        return math.ceil(self.total / self.per_page) if self.total else 0

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def prev_num(self) -> int | None:
        return self.page - 1 if self.has_prev else None

    @property
    def next_num(self) -> int | None:
        return self.page + 1 if self.has_next else None

    def prev(self, *, error_out: bool = False) -> "Pagination":
        """Return the page before this one."""
        return self._turn_to(self.page - 1, error_out)

    def next(self, *, error_out: bool = False) -> "Pagination":
        """Return the page after this one."""
        return self._turn_to(self.page + 1, error_out)

    def _turn_to(self, page: int, error_out: bool) -> "Pagination":
        # The extension's next() keeps max_per_page, and its prev() drops it
        # (so that prev() of a page of 150 has 100): both keep it here.
        turned = Pagination(
            self._select,
            page,
            self.per_page,
            self.max_per_page,
            error_out=error_out,
            count=False,
        )
        turned.total = self.total
        return turned

    def iter_pages(
        self,
        *,
        left_edge: int = 2,
        left_current: int = 2,
        right_current: int = 4,
        right_edge: int = 2,
    ) -> Iterator[int | None]:
        """Yield the page numbers a page's links show, None for a gap: with
        20 pages, on page 7, 1 2 None 5 6 7 8 9 10 11 None 19 20."""
        pages_end = self.pages + 1
        left_end = min(1 + left_edge, pages_end)
        mid_start = max(left_end, self.page - left_current)
        mid_end = min(self.page + right_current + 1, pages_end)
        right_start = max(mid_end, pages_end - right_edge)
        yield from range(1, left_end)
        if left_end == pages_end:
            return
        if mid_start > left_end:
            yield None
        yield from range(mid_start, mid_end)
        if mid_end == pages_end:
            return
        if right_start > mid_end:
            yield None
        yield from range(right_start, pages_end)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


def count_rows(session: Session, select: Select[Any]) -> int | None:
    """Count the statement's rows as the extension does: the statement as a
    subquery, unordered, with no relationships loaded."""
    rows = select.options(lazyload("*")).order_by(None).subquery()
    return session.execute(select_(func.count()).select_from(rows)).scalar()


def link_header(pagination: Pagination, endpoint: str) -> str:
    """Return a Link header (RFC 8288) to the first, previous, next and last
    pages, as GitHub's API sends one: not the extension's, the API's own."""
    pages = {"first": 1, "prev": pagination.prev_num, "next": pagination.next_num}
    pages["last"] = pagination.pages or 1
    return ", ".join(
        f"<{url_for(endpoint, page=page, per_page=pagination.per_page)}>;"
        f' rel="{relation}"'
        for relation, page in pages.items()
        if page is not None
    )


def page_and_size(
    page: int | None, per_page: int | None, max_per_page: int | None, error_out: bool
) -> tuple[int, int]:
    """Return the page and its size: given, or the request's, or the defaults,
    with the extension's rules (404 for a bad one when ``error_out``)."""
    if request:
        if page is None:
            page = request_number("page", DEFAULT_PAGE, error_out)
        if per_page is None:
            per_page = request_number("per_page", DEFAULT_PER_PAGE, error_out)
    page = DEFAULT_PAGE if page is None else page
    per_page = DEFAULT_PER_PAGE if per_page is None else per_page
    if max_per_page is not None:
        per_page = min(per_page, max_per_page)
    if page < 1:
        if error_out:
            abort(404, f"page must be 1 or more, not {page}")
        page = DEFAULT_PAGE
    if per_page < 1:
        if error_out:
            abort(404, f"per_page must be 1 or more, not {per_page}")
        per_page = DEFAULT_PER_PAGE
    return page, per_page


def request_number(name: str, default: int, error_out: bool) -> int:
    """Return the request's whole number ``name``, or its default."""
    try:
        return int(request.args.get(name, default))
    except ValueError:
        if error_out:
            abort(404, f"{name} must be a whole number, not {request.args[name]!r}")
        return default


def get_or_404(
    entity: type[T], ident: Any, *, description: str | None = None, **kwargs: Any
) -> T:
    """Return the row with this primary key, or abort with 404."""
    value = db.get_session().get(entity, ident, **kwargs)
    if value is None:
        abort(404, description)
    return value


def first_or_404(statement: Select[Any], *, description: str | None = None) -> Any:
    """Return the statement's first result, or abort with 404 if none."""
    value = db.get_session().execute(statement).scalar()
    if value is None:
        abort(404, description)
    return value


def one_or_404(statement: Select[Any], *, description: str | None = None) -> Any:
    """Return the statement's only result, or abort with 404 if there are
    none or more than one."""
    try:
        return db.get_session().execute(statement).scalar_one()
    except (NoResultFound, MultipleResultsFound):
        abort(404, description)


@dataclasses.dataclass
class QueryInfo:
    """A query of the app context's, as get_recorded_queries() lists it."""

    statement: str
    parameters: object
    start_time: float
    end_time: float
    # Where in the app's code the query ran: "file:line (function)".
    location: str

    @property
    def duration(self) -> float:
        return self.end_time - self.start_time


def get_recorded_queries() -> list[QueryInfo]:
    """Return the app context's queries, when RECORD_QUERIES is true."""
    queries: list[QueryInfo] = g.get("recorded_queries", [])
    return queries


def record_start(
    conn: Connection,
    cursor: DBAPICursor,
    statement: str,
    parameters: Any,
    context: ExecutionContext,
    executemany: bool,
) -> None:
    # Kept on the statement's own context: SQLAlchemy declares no such
    # attribute, so type checkers are told it is there.
    context.recorded_start = perf_counter()  # type: ignore[attr-defined]


def record_end(
    conn: Connection,
    cursor: DBAPICursor,
    statement: str,
    parameters: Any,
    context: ExecutionContext,
    executemany: bool,
) -> None:
    # An engine outlives app contexts: a query outside one has no g.
    if not has_app_context() or not hasattr(context, "recorded_start"):
        return
    g.setdefault("recorded_queries", []).append(
        QueryInfo(
            statement=context.statement,
            parameters=context.parameters,
            start_time=context.recorded_start,
            end_time=perf_counter(),
            location=caller_in_the_app(),
        )
    )


def caller_in_the_app() -> str:
    """Return where the app's code, outside this module, ran the query."""
    # The app's code: its top-level module (a single app.py, a package's
    # __init__.py) and the modules under it, as the extension finds it.
    top = current_app.import_name.partition(".")[0]
    frame: FrameType | None = sys._getframe()
    while frame:
        name = frame.f_globals.get("__name__", "")
        if (name == top or name.startswith(f"{top}.")) and name != __name__:
            code = frame.f_code
            return f"{code.co_filename}:{frame.f_lineno} ({code.co_name})"
        frame = frame.f_back
    return "<unknown>"


signals = Namespace()
# Sent with the app and changes, a list of (instance, operation) with
# operation "insert", "update" or "delete": after the commit, and before it.
models_committed = signals.signal("models-committed")
before_models_committed = signals.signal("before-models-committed")


def record_changes(session: Session, *args: object) -> None:
    """Remember what the Session is about to write, by row."""
    changes = session.info.setdefault("model_changes", {})
    for rows, operation in (
        (session.new, "insert"),
        (session.dirty, "update"),
        (session.deleted, "delete"),
    ):
        for row in rows:
            state = inspect(row)
            # A new row has no key until its insert: its id() until then.
            changes[state.identity_key if state.has_identity else id(row)] = (
                row,
                operation,
            )


def record_deleted(session: Session, row: object) -> None:
    """Remember a row the Session held that a DELETE removed: its own flush's,
    or a DELETE statement's that it ran."""
    changes = session.info.setdefault("model_changes", {})
    changes[inspect(row).identity_key] = (row, "delete")


def send_before_commit(session: Session) -> None:
    changes = session.info.get("model_changes")
    if changes and has_app_context():
        # The app itself, not the proxy: current_app is typed as the app it
        # stands for, so type checkers do not know _get_current_object().
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        before_models_committed.send(app, changes=list(changes.values()))


def send_after_commit(session: Session) -> None:
    changes = session.info.pop("model_changes", None)
    if changes and has_app_context():
        # The app itself, not the proxy, as above.
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        models_committed.send(app, changes=list(changes.values()))


def forget_changes(session: Session) -> None:
    session.info.pop("model_changes", None)


def shell_names() -> dict[str, Any]:
    """The names ``flask shell`` starts with: the Session and the models."""
    models = db.get_models()
    return {
        "session": db.get_session(),
        "Message": models.Message,
        "AuditEntry": models.AuditEntry,
    }


def init_app(app: Flask) -> None:
    """Record queries if RECORD_QUERIES, send the commit signals, and give
    ``flask shell`` the Session and the models."""
    if app.config["RECORD_QUERIES"]:
        for engine in app.extensions["engines"].values():
            event.listen(engine, "before_cursor_execute", record_start)
            event.listen(engine, "after_cursor_execute", record_end)
    sessions = app.extensions["session"]
    # On the registry: on every Session it makes. before_commit runs before
    # the commit's flush, so it sees what that flush will write.
    event.listen(sessions, "before_flush", record_changes)
    event.listen(sessions, "before_commit", record_changes)
    event.listen(sessions, "persistent_to_deleted", record_deleted)
    event.listen(sessions, "before_commit", send_before_commit)
    event.listen(sessions, "after_commit", send_after_commit)
    event.listen(sessions, "after_rollback", forget_changes)
    app.shell_context_processor(shell_names)
