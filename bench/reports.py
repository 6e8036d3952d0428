"""Report pages and Excel exports on PostgreSQL: do they stay flat as the data grows?

What is measured, on its own database (leadcenter_bench_reports on the server of DATABASE_URL,
by default postgres://postgres@127.0.0.1:5432/leadcenter_bench_reports, created and migrated
when missing; `BENCH_REPORTS_DATABASE_URL` names another):

- the run details page and the campaign summary page (undated, and restricted to a date range:
  the contacts first emailed yesterday and today, counted from the counters of those days) of
  a run of 1,000,000 recipients (`--quick`: 100,000) against the same pages for a run of
  10,000, both in the same database:
  queries per page (target: at most 15) and time (target: the large page at most 1.5x the small
  one). Pages are fetched through Django's test client as a logged-in superuser (middleware,
  permission checks, template), best of several tries after a warm-up;
- the Sent emails Excel export of 100,000 rows (`--quick`: 50,000), as the admin writes it
  (the changelist's queryset rebuilt from its query string, rows read from a server-side
  cursor, cells made inert, dates localised, written with openpyxl write-only), against raw
  openpyxl write-only writing the very same rows prepared in memory beforehand (target: at
  most 1.3x);
- the export's peak memory for 500,000 rows against 100,000 (`--quick`: 50,000 against 10,000)
  (target: at most 1.2x: memory stays flat). Each export runs in a fresh process of its own
  (multiprocessing, spawn) and writes its workbook to a real temporary file, as the export job
  does; the figure is that process's peak resident memory (VmHWM) during the export above its
  resident memory just before it. Before the measured export the process has set Django up,
  built the changelist's queryset and written one small export (imports, the connection,
  openpyxl's one-time set-up), and its peak is reset (/proc/self/clear_refs), so what is
  measured is what the export holds while it writes: all of it, Python objects and C buffers
  (psycopg's, lxml's, zlib's) alike, which tracemalloc would not see.

The data is generated set-wise with INSERT ... SELECT generate_series: contacts with ten owners
(and some without), a run's recipients in every status and filter reason, one email each with
statuses, rejections of every category, and opens and clicks by people and machines over two
days. The database triggers of campaigns migration 0007 keep the report counters as the rows
are inserted, as they do in production. The data is kept between runs and reused when its sizes
match.

    python -m bench.reports [--quick] [--fresh] [--only pages|excel|memory]
"""

from __future__ import annotations

import argparse
import gc
import io
import multiprocessing
import os
import resource
import tempfile
import time
from dataclasses import dataclass

NAME = "reports"
MAX_QUERIES = 15
PAGE_RATIO_TARGET = 1.5
EXCEL_RATIO_TARGET = 1.3
MEMORY_RATIO_TARGET = 1.2
SMALL = 10_000
LARGE, LARGE_QUICK = 1_000_000, 100_000
EXCEL_ROWS, EXCEL_ROWS_QUICK = 100_000, 50_000
MEMORY_SIZES, MEMORY_SIZES_QUICK = (100_000, 500_000), (10_000, 50_000)
OWNERS = 10
TRIES = 15

Figure = tuple[str, float, "float | None", bool]


def _say(text: str = "") -> None:
    print(text, flush=True)


def _setup(name: str = NAME) -> None:
    """Django on the benchmark's own database (created and migrated when missing), switching
    this process to it even when another benchmark ran in it before."""
    import warnings

    from bench import common

    # whitenoise (on when DEBUG is off) warns that collectstatic has not run; no page here
    # serves a static file.
    warnings.filterwarnings("ignore", message="No directory at")
    if "BENCH_REPORTS_DATABASE_URL" in os.environ:
        os.environ["DATABASE_URL"] = os.environ["BENCH_REPORTS_DATABASE_URL"]
        common.setup_django()
    else:
        common.setup_django(name)
    from django.conf import settings
    from django.contrib.staticfiles.storage import staticfiles_storage
    from django.core.files.storage import storages
    from django.utils.functional import empty

    # The pages are fetched through the test client, whose host is "testserver". DEBUG is off
    # (no query log), so production's manifest storage would want collectstatic; static URLs
    # cost the same either way.
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    storages.__dict__.pop("backends", None)
    storages._storages.pop("staticfiles", None)
    staticfiles_storage._wrapped = empty
    common.migrate()


# --- data ---------------------------------------------------------------------------------


@dataclass
class Fixture:
    small_run: int
    large_run: int
    small_campaign: int
    large_campaign: int
    superuser_id: int


def _fixture_for(large: int) -> Fixture | None:
    """The data of an earlier run of the benchmark, if it has these sizes."""
    from django.contrib.auth import get_user_model

    from campaigns.models import CampaignRun
    from campaigns.reports import run_counts

    runs = {
        run.campaign.name: run
        for run in CampaignRun.objects.select_related("campaign").filter(
            campaign__name__in=[f"Bench {SMALL}", f"Bench {large}"]
        )
    }
    small_run, large_run = runs.get(f"Bench {SMALL}"), runs.get(f"Bench {large}")
    admin = get_user_model().objects.filter(username="bench-admin").first()
    if not (small_run and large_run and admin):
        return None
    if run_counts(run=small_run)["recipients"] != SMALL:
        return None
    if run_counts(run=large_run)["recipients"] != large:
        return None
    return Fixture(small_run.pk, large_run.pk, small_run.campaign_id, large_run.campaign_id,
                   admin.pk)  # fmt: skip


def start_data():
    """Empty tables, then the admin login, the owners (as an SQL array of their ids for
    _insert_rows) and the sending account every generated email goes through."""
    from django.contrib.auth import get_user_model

    from bench import common
    from campaigns.models import SendingAccount

    common.truncate()
    User = get_user_model()
    User.objects.filter(username__startswith="bench-").delete()
    admin = User.objects.create_superuser("bench-admin", "admin@bench.example", "bench")
    owners = [
        User.objects.create_user(f"bench-owner{i}", first_name=f"Owner{i}", last_name="Bench")
        for i in range(OWNERS)
    ]
    owner_ids = "ARRAY[" + ", ".join(str(u.pk) for u in owners) + "]"
    account = SendingAccount.objects.create(name="Bench", from_email="bench@leadcenter.example")
    return admin, owner_ids, account


def generate_run(name: str, account, owner_ids: str, first: int, last: int):
    """A finished campaign of one step and one completed run over the contacts numbered
    first..last (created here with their recipients, emails, rejections and events)."""
    from django.db import connection, transaction

    from campaigns.models import Campaign, CampaignRun, CampaignStep

    with transaction.atomic():
        campaign = Campaign.objects.create(name=name, state="finished")
        campaign.accounts.add(account)
        step = CampaignStep.objects.create(campaign=campaign, position=1, subject="Hi")
        run = CampaignRun.objects.create(campaign=campaign, status="completed")
        with connection.cursor() as cursor:
            _insert_rows(cursor, run.pk, step.pk, account.pk, owner_ids, first, last)
    return campaign, run


def _generate(large: int) -> Fixture:
    from bench import common

    admin, owner_ids, account = start_data()
    fixture = {}
    first_contact = 1
    for size in (SMALL, large):
        started = time.monotonic()
        last = first_contact + size - 1
        campaign, run = generate_run(f"Bench {size}", account, owner_ids, first_contact, last)
        common.execute_autocommit("VACUUM ANALYZE")
        _say(f"  generated a run of {size:,} recipients in {time.monotonic() - started:.0f}s")
        fixture[size] = (run.pk, campaign.pk)
        first_contact = last + 1
    return Fixture(fixture[SMALL][0], fixture[large][0], fixture[SMALL][1], fixture[large][1],
                   admin.pk)  # fmt: skip


# Per contact g, by g % 1000 (shares per mille): 60 filtered (the eight reasons), 30 hard
# bounces, 20 refused as spam or unspecified (failed), 15 soft bounces still retrying
# (pending), 25 partial, the rest sent. Of those that got through: 45% delivered, 25% opened
# by a person, 6% clicked, 1% replied, 0.5% unsubscribed, 0.1% complained, 0.5% leads.
_REASONS = ("unsubscribed", "do_not_email", "do_not_mass_email", "no_email", "invalid_email",
            "blocked", "duplicate", "no_email_selected")  # fmt: skip


def _insert_rows(cursor, run_id, step_id, account_id, owner_ids, first, last) -> None:
    from django.conf import settings

    reasons = "ARRAY[" + ", ".join(f"'{r}'" for r in _REASONS) + "]"
    cursor.execute(
        f"""
        INSERT INTO contacts_contact
            (email, first_name, last_name, company, owner_id, email_status, invalid_reason,
             do_not_email, do_not_mass_email, stage, created, updated)
        SELECT 'c' || g || '@bench.example', 'First' || (g %% 997), 'Last' || g,
               'Company ' || (g %% 5003),
               CASE WHEN g %% 11 = 0 THEN NULL ELSE ({owner_ids})[g %% {OWNERS} + 1] END,
               'valid', '', false, false, 'subscriber', now(), now()
        FROM generate_series(%s, %s) AS g
        """,
        [first, last],
    )
    # Recipients: the contacts inserted just now, in id order.
    cursor.execute(
        f"""
        INSERT INTO campaigns_recipient
            (run_id, contact_id, email, account_id, status, filter_reason, steps_sent,
             last_action_at, delivered_at, opened_at, clicked_at, replied_at, unsubscribed_at,
             complained_at, bounced_at, lead_at, opportunity_at, first_sent_on)
        SELECT %(run)s, c.id, c.email, CASE WHEN k < 60 THEN NULL ELSE %(account)s END,
               CASE WHEN k < 60 THEN 'filtered' WHEN k < 110 THEN 'failed'
                    WHEN k < 125 THEN 'pending' WHEN k < 150 THEN 'partial' ELSE 'sent' END,
               CASE WHEN k < 60 THEN ({reasons})[k %% 8 + 1] ELSE '' END,
               CASE WHEN k < 125 THEN 0 ELSE 1 END,
               t, CASE WHEN k >= 150 AND k < 600 THEN t END,
               CASE WHEN k >= 150 AND k < 400 THEN t + interval '1 hour' END,
               CASE WHEN k >= 150 AND k < 210 THEN t + interval '2 hours' END,
               CASE WHEN k >= 150 AND k < 160 THEN t + interval '3 hours' END,
               CASE WHEN k >= 400 AND k < 405 THEN t END,
               CASE WHEN k = 405 THEN t END,
               CASE WHEN k >= 60 AND k < 90 THEN t END,
               CASE WHEN k >= 150 AND k < 155 THEN t + interval '1 day' END,
               CASE WHEN k >= 150 AND k < 152 THEN t + interval '2 days' END,
               -- Emailed (accepted or refused): the day of its email, in the admin's zone.
               CASE WHEN k >= 60 THEN CAST(t AT TIME ZONE %(zone)s AS date) END
        FROM (
            SELECT c.id, c.email, c.id %% 1000 AS k,
                   now() - interval '2 days' + (c.id %% 2880) * interval '1 minute' AS t
            FROM contacts_contact c WHERE c.id BETWEEN %(first)s AND %(last)s
        ) c
        """,
        {
            "run": run_id,
            "account": account_id,
            "first": first,
            "last": last,
            "zone": settings.TIME_ZONE,
        },
    )
    cursor.execute(
        """
        INSERT INTO campaigns_message
            (recipient_id, run_id, step_id, account_id, message_id, esp_message_id, status,
             attempts, smtp_code, smtp_status, smtp_response, created, claimed_at, sent_at,
             status_changed_at, delivered_at, opened_at, clicked_at, replied_at,
             unsubscribed_at, complained_at, open_count, click_count, owner_id)
        SELECT r.id, r.run_id, %(step)s, r.account_id, '<bench.' || r.id || '@bench.example>',
               '',
               CASE WHEN k < 90 THEN 'bounced' WHEN k < 110 THEN 'failed'
                    WHEN k < 125 THEN 'soft_bounced' WHEN r.replied_at IS NOT NULL THEN 'replied'
                    WHEN r.clicked_at IS NOT NULL THEN 'clicked'
                    WHEN r.opened_at IS NOT NULL THEN 'opened'
                    WHEN r.delivered_at IS NOT NULL THEN 'delivered' ELSE 'sent' END,
               1,
               CASE WHEN k < 90 THEN 550 WHEN k < 110 THEN 554 WHEN k < 125 THEN 452 ELSE 250 END,
               CASE WHEN k < 90 THEN '5.1.1' WHEN k < 110 THEN '5.7.1' WHEN k < 125 THEN '4.2.2'
                    ELSE '2.0.0' END,
               CASE WHEN k < 125 THEN 'refused' ELSE '2.0.0 Ok: queued' END,
               r.last_action_at, r.last_action_at,
               CASE WHEN k >= 125 THEN r.last_action_at END, r.last_action_at,
               r.delivered_at, r.opened_at, r.clicked_at, r.replied_at, r.unsubscribed_at,
               r.complained_at,
               CASE WHEN r.opened_at IS NOT NULL THEN 1 ELSE 0 END,
               CASE WHEN r.clicked_at IS NOT NULL THEN 1 ELSE 0 END,
               r.contact_owner
        FROM (SELECT r.*, r.contact_id %% 1000 AS k, c.owner_id AS contact_owner
              FROM campaigns_recipient r JOIN contacts_contact c ON c.id = r.contact_id
              WHERE r.run_id = %(run)s AND r.status <> 'filtered') r
        """,
        {"run": run_id, "step": step_id},
    )
    # Rejections of every category (the trigger sets each recipient's bits).
    cursor.execute(
        """
        INSERT INTO tracking_rejection
            (message_id, email, kind, category, smtp_code, smtp_status, diagnostic, source,
             created)
        SELECT m.id, '', CASE WHEN k < 90 THEN 'hard' ELSE 'soft' END,
               CASE WHEN k < 75 THEN 'user_not_found' WHEN k < 90 THEN 'domain_not_found'
                    WHEN k < 103 THEN 'spam_blocked' WHEN k < 110 THEN 'unspecified'
                    WHEN k < 120 THEN 'mailbox_full' ELSE 'no_answer' END,
               m.smtp_code, m.smtp_status, 'refused', 'smtp', m.created
        FROM (SELECT m.*, r.contact_id %% 1000 AS k FROM campaigns_message m
              JOIN campaigns_recipient r ON r.id = m.recipient_id
              WHERE m.run_id = %(run)s AND m.status IN ('bounced', 'failed', 'soft_bounced')) m
        """,
        {"run": run_id},
    )
    # Opens and clicks by people, and opens by machines (privacy proxies), over two days.
    cursor.execute(
        """
        INSERT INTO tracking_trackingevent
            (message_id, type, source, occurred_at, received_at, dedupe_key, email,
             from_status, to_status, url, user_agent, is_machine, detail, raw)
        SELECT m.id, e.type, 'pixel', e.at, e.at,
               'bench:' || e.type || ':' || e.machine || ':' || m.id,
               '', '', '', '', '', e.machine, '', ''
        FROM campaigns_message m
        JOIN campaigns_recipient r ON r.id = m.recipient_id
        CROSS JOIN LATERAL (VALUES
            ('opened', false, r.opened_at),
            ('clicked', false, r.clicked_at),
            ('opened', true, CASE WHEN r.contact_id %% 10 = 0 THEN m.sent_at END)
        ) AS e(type, machine, at)
        WHERE m.run_id = %(run)s AND e.at IS NOT NULL
        """,
        {"run": run_id},
    )


# --- measurements ------------------------------------------------------------------------------


def _client(fixture: Fixture):
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(pk=fixture.superuser_id))
    return client


def _queries(client, url: str) -> int:
    """Statements one get of the page sends to the database."""
    from django.db import connection

    sent: list[str] = []

    def count(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        assert client.get(url, secure=True).status_code == 200, url
    return len(sent)


def _time_pages(client, small_url: str, large_url: str) -> tuple[float, float]:
    """Best time of each page over TRIES rounds that alternate the two, after a warm-up, so
    that whatever else the machine is doing weighs on both alike."""
    best = {small_url: float("inf"), large_url: float("inf")}
    for url in best:
        for _ in range(2):
            assert client.get(url, secure=True).status_code == 200, url
    for _ in range(TRIES):
        for url in best:
            started = time.perf_counter()
            response = client.get(url, secure=True)
            best[url] = min(best[url], time.perf_counter() - started)
            assert response.status_code == 200
    return best[small_url], best[large_url]


def _pages(fixture: Fixture, large: int) -> list[Figure]:
    from django.urls import reverse

    client = _client(fixture)
    figures: list[Figure] = []
    rows = []
    pages = {
        "run details": lambda run, campaign: reverse(
            "admin:campaigns_campaignrun_details", args=[run]
        ),
        "summary": lambda run, campaign: reverse(
            "admin:campaigns_campaign_summary", args=[campaign]
        ),
    }
    for page, url_of in pages.items():
        small_url = url_of(fixture.small_run, fixture.small_campaign)
        large_url = url_of(fixture.large_run, fixture.large_campaign)
        small_time, large_time = _time_pages(client, small_url, large_url)
        small_queries, large_queries = _queries(client, small_url), _queries(client, large_url)
        ratio = large_time / small_time
        rows.append([page, f"{SMALL:,}", small_queries, small_time * 1000])
        rows.append([page, f"{large:,}", large_queries, large_time * 1000])
        queries = max(small_queries, large_queries)
        figures.append((f"{page}: queries per page", queries, MAX_QUERIES, queries <= MAX_QUERIES))
        figures.append(
            (f"{page}: time {large:,} / {SMALL:,} recipients", ratio, PAGE_RATIO_TARGET,
             ratio <= PAGE_RATIO_TARGET)
        )  # fmt: skip
    # A summary restricted to a date range (the contacts first emailed on those days): from
    # the counters of those days (campaigns migration 0013), under the same targets.
    from django.utils import timezone

    today = timezone.localdate()
    dated = f"?sent_after={today - timezone.timedelta(days=1)}&sent_before={today}"
    small_url = reverse("admin:campaigns_campaign_summary", args=[fixture.small_campaign])
    large_url = reverse("admin:campaigns_campaign_summary", args=[fixture.large_campaign])
    small_time, large_time = _time_pages(client, small_url + dated, large_url + dated)
    small_queries, large_queries = (_queries(client, u + dated) for u in (small_url, large_url))
    page = "summary, first emailed in a date range"
    rows.append([page, f"{SMALL:,}", small_queries, small_time * 1000])
    rows.append([page, f"{large:,}", large_queries, large_time * 1000])
    queries, ratio = max(small_queries, large_queries), large_time / small_time
    figures.append((f"{page}: queries per page", queries, MAX_QUERIES, queries <= MAX_QUERIES))
    figures.append(
        (f"{page}: time {large:,} / {SMALL:,} recipients", ratio, PAGE_RATIO_TARGET,
         ratio <= PAGE_RATIO_TARGET)
    )  # fmt: skip
    from bench.common import table

    _say(table(["page", "recipients", "queries", "best ms"], rows))
    return figures


def _export_queryset(fixture: Fixture, rows: int):
    """The Sent emails list filtered to the large run's first `rows` emails, as a person would
    filter it, and the changelist's own queryset for it."""
    from django.contrib import admin
    from django.contrib.auth import get_user_model

    from campaigns.exports import changelist_queryset, replay_request
    from campaigns.models import Message

    ids = (
        Message.objects.filter(run_id=fixture.large_run).order_by("pk").values_list("pk", flat=True)
    )
    last = ids[rows - 1]
    user = get_user_model().objects.get(pk=fixture.superuser_id)
    request = replay_request(user=user, query=f"run__id__exact={fixture.large_run}&id__lte={last}")
    _changelist, queryset = changelist_queryset(admin.site._registry[Message], request)
    return queryset


def _excel(fixture: Fixture, rows: int) -> list[Figure]:
    from openpyxl import Workbook

    from campaigns import exports

    queryset = _export_queryset(fixture, rows)
    prepared = list(exports.list_rows(exports.MESSAGES, queryset))
    assert len(prepared) == rows

    def ours() -> float:
        started = time.perf_counter()
        with io.BytesIO() as fh:
            written = exports.list_export_write(exports.MESSAGES, queryset, fh)
        assert written == rows
        return time.perf_counter() - started

    def raw() -> float:
        started = time.perf_counter()
        workbook = Workbook(write_only=True)
        sheet = workbook.create_sheet("Sent emails")
        sheet.append([c.title for c in exports.MESSAGES.columns])
        for row in prepared:
            sheet.append(row)
        with io.BytesIO() as fh:
            workbook.save(fh)
        return time.perf_counter() - started

    times = {"ours": [], "raw": []}
    for _ in range(3):  # alternate, keep the best of each
        times["raw"].append(raw())
        times["ours"].append(ours())
    ours_best, raw_best = min(times["ours"]), min(times["raw"])
    ratio = ours_best / raw_best
    _say(f"  Excel, {rows:,} rows x {len(exports.MESSAGES.columns)} columns: export "
         f"{ours_best:.2f}s (query, inert cells, dates, styles, write), raw openpyxl "
         f"{raw_best:.2f}s (the same rows, prepared in memory)")  # fmt: skip
    return [(f"Excel {rows:,} rows: export / raw openpyxl", ratio, EXCEL_RATIO_TARGET,
             ratio <= EXCEL_RATIO_TARGET)]  # fmt: skip


# Rows of the export written before the measured one, in the same process: what any export
# costs once per process (lazy imports, the connection, openpyxl's set-up) is not the export's.
WARM_UP_ROWS = 1_000


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (kB there), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


def _reset_peak() -> bool:
    """Start the peak resident memory (VmHWM) again from the current one (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _export_in_child(fixture: Fixture, rows: int) -> tuple[int, int, bool]:
    """Runs in a process of its own: one Sent emails export of `rows` rows to a real file.
    Returns (resident memory before it, peak resident memory during it, whether the peak could
    be reset to the state before it), in bytes."""
    from bench import common

    # The parent's DATABASE_URL already names the benchmark database.
    common.setup_django()
    from campaigns import exports

    def export(queryset, expected: int) -> None:
        with tempfile.TemporaryFile() as fh:
            written = exports.list_export_write(exports.MESSAGES, queryset, fh)
        assert written == expected

    export(_export_queryset(fixture, WARM_UP_ROWS), WARM_UP_ROWS)
    queryset = _export_queryset(fixture, rows)
    gc.collect()
    before = _status_bytes("VmRSS")
    reset = _reset_peak()
    export(queryset, rows)
    if reset:
        peak = _status_bytes("VmHWM")
    else:  # the peak since the process started (ru_maxrss is in kB on Linux)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return before, peak, reset


def _peak_memory(fixture: Fixture, rows: int) -> int:
    """The export's own peak memory, in bytes: its process's peak resident memory during the
    export above its resident memory before it."""
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        before, peak, reset = pool.apply(_export_in_child, (fixture, rows))
    since = "" if reset else " (peak since the process started: no /proc/self/clear_refs)"
    _say(f"  export of {rows:,} rows in its own process: resident {before / 2**20:.1f} MiB "
         f"before, peak {peak / 2**20:.1f} MiB during it{since}")  # fmt: skip
    return peak - before


def _memory(fixture: Fixture, sizes: tuple[int, int]) -> list[Figure]:
    small, large = (_peak_memory(fixture, n) for n in sizes)
    ratio = large / small
    _say(f"  Excel export peak memory above the process's own: {sizes[0]:,} rows "
         f"{small / 2**20:.1f} MiB, {sizes[1]:,} rows {large / 2**20:.1f} MiB")  # fmt: skip
    return [(f"Excel peak memory {sizes[1]:,} / {sizes[0]:,} rows", ratio, MEMORY_RATIO_TARGET,
             ratio <= MEMORY_RATIO_TARGET)]  # fmt: skip


def _run(*, quick: bool, fresh: bool, only: str | None) -> list[Figure]:
    _setup()
    large = LARGE_QUICK if quick else LARGE
    fixture = None if fresh else _fixture_for(large)
    if fixture is None:
        _say(f"Generating runs of {SMALL:,} and {large:,} recipients...")
        fixture = _generate(large)
    else:
        _say(f"Reusing the runs of {SMALL:,} and {large:,} recipients already generated.")
    figures: list[Figure] = []
    if only in (None, "pages"):
        figures += _pages(fixture, large)
    if only in (None, "excel"):
        figures += _excel(fixture, EXCEL_ROWS_QUICK if quick else EXCEL_ROWS)
    if only in (None, "memory"):
        figures += _memory(fixture, MEMORY_SIZES_QUICK if quick else MEMORY_SIZES)
    return figures


def main(*, quick: bool = False, fresh: bool = False, only: str | None = None) -> list[Figure]:
    """The figures as (name, value, target or None, met)."""
    started = time.monotonic()
    _say(f"REPORTS ({'quick' if quick else 'full'} sizes): pages and Excel exports on PostgreSQL")
    figures = _run(quick=quick, fresh=fresh, only=only)
    _say()
    for name, value, target, met in figures:
        verdict = "PASS" if met else "MISS"
        target_text = f"(target <= {target:g})" if target is not None else "(for information)"
        _say(f"{verdict}  {NAME:<10} {name:<52} {value:>9.3f}  {target_text}")
    _say(f"({time.monotonic() - started:.0f}s)")
    return figures


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reports", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="100,000 recipients instead of 1,000,000"
    )
    parser.add_argument("--fresh", action="store_true", help="generate the data again")
    parser.add_argument("--only", choices=["pages", "excel", "memory"], help="one measurement")
    args = parser.parse_args(argv)
    main(quick=args.quick, fresh=args.fresh, only=args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
