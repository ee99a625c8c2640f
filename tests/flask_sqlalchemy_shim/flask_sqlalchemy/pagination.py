"""The extension's Pagination base class, on step 10's."""

from step10_helpers import helpers


class Pagination(helpers.Pagination):
    """A page of whatever a subclass queries, as the extension's base class
    is made: the subclass gives the items and the count (``_query_items``,
    ``_query_count``), and step 10's Pagination the rest: the page and its
    size as paginate() reads them, every field, and iter_pages().

    Only that: no test of a subclass turns its page (prev(), next()) or
    asks for an empty one (the 404), which db.paginate()'s tests reach in
    step 10's own Pagination.
    """

    def __init__(
        self,
        page=None,
        per_page=None,
        max_per_page=100,
        error_out=True,
        count=True,
        **query_args,
    ):
        # What the subclass needs to know of its query, kept for it.
        self._query_args = query_args
        self.page, self.per_page = helpers.page_and_size(
            page, per_page, max_per_page, error_out
        )
        self.max_per_page = max_per_page
        self.items = self._query_items()
        self.total = self._query_count() if count else None

    @property
    def _query_offset(self):
        """The index of the page's first item, for a subclass's query."""
        return (self.page - 1) * self.per_page
