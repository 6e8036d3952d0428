"""The Sent emails list at a million emails against the same list at ten thousand.

Issue #5: "any page, any filter, at 1,000,000 messages, under the time of the page at 10,000
times 1.5". Two PostgreSQL databases of their own (leadcenter_bench_sent_small with 10,000
emails, leadcenter_bench_sent_large with 1,000,000; `--quick`: 100,000), filled set-wise the
same way as the reports benchmark (bench.reports._insert_rows: four campaigns of one run each,
contacts with ten owners, every status, rejections of every category, opens and clicks). Each
page of the list (first, middle and last page, every filter of the sidebar, the rejection kind
and category, a date range, a combination, and searches by whole address and by name) is
fetched through Django's test client as a logged-in superuser, alternately in both databases,
and its best time kept; the figure is the worst ratio large / small over the pages, the single
filters and searches, and two broad filters together (one owner with status sent, pages 1 and
2: Message.owner and its index message_owner_status, campaigns migration 0012, hold both).
Two narrower combinations (one owner with status bounced, one owner with soft rejections) are
shown for information, not in the figure: at 10,000 emails they hold 30 and 40 emails in all,
so their pages show 30 and 40 rows against 100 at 1,000,000, and the ratio compares pages of
different sizes (rendering the rows is most of a page's time; their queries take under a
millisecond at both sizes, reading message_owner_status and msg_rej_owner_soft).

    python -m bench.sent_emails [--quick] [--fresh]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from urllib.parse import quote

NAME = "sent_emails"
SMALL, LARGE, LARGE_QUICK = 10_000, 1_000_000, 100_000
CAMPAIGNS = 4
# Share of the generated recipients that get an email (bench.reports: 60 per mille filtered).
EMAILED = 0.94
TARGET = 1.5
TRIES = 9
# Two filters at once: one owner (the email's own copy of its contact's owner) with a status,
# or with a rejection kind; message_owner_status and msg_rej_owner_* hold both.
COMBINED = "two filters: sent and one owner"
# Fewer rows at 10,000 than at 1,000,000 (see above): shown, not in the figure.
BOUNCED = "two filters: bounced and one owner, page 2 (for information)"
SOFT = "two filters: soft rejections and one owner (for information)"
INFORMATION = {BOUNCED, SOFT}

Figure = tuple[str, float, "float | None", bool]


def _say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Data:
    database: str
    emails: int
    campaigns: list[int]
    runs: list[int]
    account: int
    owner: int
    first_name: str
    last_name: str
    address: str
    superuser: int


def _switch(database: str) -> None:
    from bench import common

    common.use_database(database)
    common.migrate()


def _existing(size: int) -> Data | None:
    from django.contrib.auth import get_user_model

    from campaigns.models import Campaign, Message

    names = [f"List {size} #{i}" for i in range(1, CAMPAIGNS + 1)]
    campaigns = list(Campaign.objects.filter(name__in=names).order_by("name"))
    admin = get_user_model().objects.filter(username="bench-admin").first()
    emails = Message.objects.count()
    if len(campaigns) != CAMPAIGNS or admin is None or abs(emails - size) > size * 0.02:
        return None
    return _describe(size, campaigns, admin, emails)


def _describe(size: int, campaigns, admin, emails: int) -> Data:
    from django.contrib.auth import get_user_model

    from campaigns.models import CampaignRun, Message, SendingAccount

    runs = [CampaignRun.objects.get(campaign=c).pk for c in campaigns]
    # One address and one person from the middle of the data.
    middle = Message.objects.select_related("recipient__contact").order_by("pk")[emails // 2]
    contact = middle.recipient.contact
    owner = get_user_model().objects.filter(username="bench-owner3").get()
    return Data(
        database="", emails=emails, campaigns=[c.pk for c in campaigns], runs=runs,
        account=SendingAccount.objects.get().pk, owner=owner.pk,
        first_name=contact.first_name, last_name=contact.last_name, address=middle.recipient.email,
        superuser=admin.pk,
    )  # fmt: skip


def _generate(size: int) -> Data:
    from bench import common
    from bench.reports import generate_run, start_data
    from campaigns.models import Message

    admin, owner_ids, account = start_data()
    per_run = math.ceil(size / EMAILED / CAMPAIGNS)
    started = time.monotonic()
    campaigns = [
        generate_run(f"List {size} #{i}", account, owner_ids, 1 + (i - 1) * per_run,
                     i * per_run)[0]
        for i in range(1, CAMPAIGNS + 1)
    ]  # fmt: skip
    common.execute_autocommit("VACUUM ANALYZE")
    emails = Message.objects.count()
    _say(f"  generated {emails:,} emails in {time.monotonic() - started:.0f}s")
    return _describe(size, campaigns, admin, emails)


def _data(database: str, size: int, fresh: bool) -> Data:
    _switch(database)
    data = None if fresh else _existing(size)
    if data is None:
        _say(f"Generating {size:,} emails in leadcenter_bench_{database}...")
        data = _generate(size)
    else:
        _say(f"Reusing the {data.emails:,} emails of leadcenter_bench_{database}.")
    data.database = database
    return data


def _pages(data: Data) -> dict[str, str]:
    """Label -> query string of the Sent emails list, for this database's own ids."""
    from django.utils import timezone

    # As the admin's own date filter writes them: aware midnights, not bare dates (which
    # Django would take as naive datetimes, with a warning).
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = quote(str(today - timezone.timedelta(days=1)))
    return {
        "first page": "",
        "page 5": "p=5",
        "page 10 (the last the list offers)": "p=10",
        "status opened": "status__exact=opened",
        "status bounced": "status__exact=bounced",
        "campaign": f"run__campaign__id__exact={data.campaigns[1]}",
        "run": f"run__id__exact={data.runs[2]}",
        "account": f"account__id__exact={data.account}",
        "owner": f"owner__id__exact={data.owner}",
        "hard rejections": "rejection=hard",
        "rejected: domain not found": "rejection=domain_not_found",
        "rejected: no answer": "rejection=no_answer",
        "sent yesterday": f"created__gte={yesterday}&created__lt={quote(str(today))}",
        COMBINED: f"status__exact=sent&owner__id__exact={data.owner}",
        f"{COMBINED}, page 2": f"status__exact=sent&owner__id__exact={data.owner}&p=2",
        BOUNCED: f"status__exact=bounced&owner__id__exact={data.owner}&p=2",
        SOFT: f"rejection=soft&owner__id__exact={data.owner}",
        "search a whole address": f"q={data.address}",
        "search a last name": f"q={data.last_name}",
        "search first and last name": f"q={data.first_name}+{data.last_name}",
    }


def _client(data: Data):
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(pk=data.superuser))
    return client


def _fetch(client, url: str) -> float:
    started = time.perf_counter()
    response = client.get(url, secure=True)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, (url, response.status_code)
    return elapsed


def _rows(response) -> int:
    """Rows of the list on the page (a page with none shows no table)."""
    html = response.content.decode()
    start = html.find('id="result_list"')
    return 0 if start < 0 else html[start : html.find("</table>", start)].count("<tr") - 1


def _measure(small: Data, large: Data) -> list[Figure]:
    from django.urls import reverse

    from bench.common import table

    base = reverse("admin:campaigns_message_changelist")
    pages = {label: (small_q, _pages(large)[label]) for label, small_q in _pages(small).items()}
    best = {label: [float("inf"), float("inf")] for label in pages}
    results: dict[str, list[int]] = {}
    for attempt in range(TRIES + 1):
        for side, data in enumerate((small, large)):
            _switch(data.database)
            client = _client(data)
            for label, queries in pages.items():
                url = f"{base}?{queries[side]}" if queries[side] else base
                elapsed = _fetch(client, url)
                if attempt:  # the first round warms caches
                    best[label][side] = min(best[label][side], elapsed)
                else:
                    results.setdefault(label, []).append(_rows(client.get(url, secure=True)))
    rows, worst = [], ("", 0.0)
    for label, (small_s, large_s) in best.items():
        ratio = large_s / small_s
        rows.append([label, *results[label], small_s * 1000, large_s * 1000, ratio])
        if ratio > worst[1] and label not in INFORMATION:
            worst = (label, ratio)
    _say(table(["page", "rows small", "rows large", "10,000 ms", f"{large.emails:,} ms",
                "ratio"], rows))  # fmt: skip
    return [
        (f"Sent emails, worst page ({worst[0]}) {large.emails:,} / {small.emails:,}",
         worst[1], TARGET, worst[1] <= TARGET)
    ]  # fmt: skip


def main(*, quick: bool = False, fresh: bool = False) -> list[Figure]:
    from bench.reports import _setup

    started = time.monotonic()
    size = LARGE_QUICK if quick else LARGE
    _say(f"SENT EMAILS LIST ({'quick' if quick else 'full'} sizes): {size:,} vs {SMALL:,} emails")
    _setup("sent_small")
    small = _data("sent_small", SMALL, fresh)
    large = _data("sent_large", size, fresh)
    figures = _measure(small, large)
    for name, value, target, met in figures:
        _say(f"{'PASS' if met else 'MISS'}  {name}  {value:.3f}  (target <= {target:g})")
    _say(f"({time.monotonic() - started:.0f}s)")
    return figures


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sent_emails", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="100,000 emails, not 1,000,000")
    parser.add_argument("--fresh", action="store_true", help="generate the data again")
    args = parser.parse_args(argv)
    main(quick=args.quick, fresh=args.fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
