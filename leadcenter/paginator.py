"""A paginator for lists of millions of rows (Sent emails, Recipients).

Django's admin counts the filtered rows on every page (`SELECT COUNT(*)`), which costs in
proportion to the table: at a million emails the count alone outweighs the page. This one
counts at most `CAP` rows (`SELECT COUNT(*) FROM (... LIMIT CAP + 1)`), so a page costs the
same at ten thousand rows and at ten million: up to `CAP` the count is exact; above it the list
says "more than CAP" and offers the pages of the first `CAP` rows (newest first). The run
details and summary pages give the exact figures, and an export writes every row.
"""

from __future__ import annotations

from django.core.paginator import Paginator
from django.utils.functional import cached_property

CAP = 10_000


class CappedCountPaginator(Paginator):
    cap = CAP

    @cached_property
    def count(self) -> int:
        # No ORDER BY: the count needs none, and it would sort what it counts.
        found = self.object_list.order_by()[: self.cap + 1].count()
        self.capped = found > self.cap
        return min(found, self.cap)

    capped = False
