"""A paginator for lists of millions of rows (Sent emails, Recipients).

Django's admin counts the filtered rows on every page (`SELECT COUNT(*)`), which costs in
proportion to the table: at a million emails the count alone outweighs the page. This one
counts at most `CAP` rows (`SELECT COUNT(*) FROM (... LIMIT CAP + 1)`), so a page costs the
same at ten thousand rows and at ten million: up to `CAP` the count is exact; above it the list
says "more than CAP" and offers the pages of the first `CAP` rows (newest first). Counting
up to CAP rows costs in proportion to CAP when a filter is rare, so CAP stays small: ten pages
of a hundred, enough to browse; beyond that people filter, search or export. The run
details and summary pages give the exact figures, and an export writes every row.
"""

from __future__ import annotations

from django.core.paginator import Paginator
from django.utils.functional import cached_property

CAP = 1_000


class CappedCountPaginator(Paginator):
    cap = CAP

    @cached_property
    def count(self) -> int:
        # Only the ids, no ORDER BY and no joins for display: a count needs none of them.
        rows = self.object_list.order_by().select_related(None).values("pk")
        found = rows[: self.cap + 1].count()
        self.capped = found > self.cap
        return min(found, self.cap)

    capped = False
