"""Audience preparation: `run_prepare` against a bare INSERT ... SELECT of the same rows.

What is measured: `campaigns.services.run_prepare(run=...)` over a campaign whose two lists hold
1,000,000 contacts (`--quick`: 100,000), about 8% of them filtered, 1% for each of the eight
reasons (unsubscribed, do_not_email, do_not_mass_email, no_email, invalid_email (half marked
invalid, half not an address), blocked (an active Suppression row), no_email_selected (opted
out of the campaign's topic), duplicate (the same address with a trailing space)). It writes one
Recipient per contact with its status, filter reason and account, and one queued step-1 Message
per recipient that is not filtered, in one transaction, and then counts and updates the run.

Baseline: a bare INSERT ... SELECT into campaigns_recipient of the same contacts, selected
through the same list membership, writing the same rows (status, filter reason and account
read off the generator's id pattern instead of checked: no suppression or topic lookups, no
window functions), then the same INSERT ... SELECT into campaigns_message as run_prepare's (one
queued message per pending recipient), in one transaction. Both sides write the same number of
rows into the same tables with the same indexes.

Between timed phases recipients, messages and runs are truncated and a CHECKPOINT flushes the
previous phase's writes; contacts are generated with generate_series and VACUUM ANALYZEd once
per size. Each phase is timed several times, alternating the two sides; the best time counts.

Targets: run_prepare <= 1.5x the baseline at the large size; and scaling: run_prepare over
1,000,000 contacts <= 110x run_prepare over 10,000 (`--quick`: 100,000 vs 1,000: the same 100x
step in size, the same 110x target).

    python -m bench.audience [--quick]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench import common
from bench.common import Result, say, stopwatch, table

NAME = "audience"
RATIO_TARGET = 1.5
SCALING_TARGET = 110.0
FULL_SIZES = (10_000, 1_000_000)
QUICK_SIZES = (1_000, 100_000)
# contact id % 100 -> the filter reason the generator gives it (ids start at FIRST_ID).
REASON_BY_REMAINDER = (
    "unsubscribed",
    "do_not_email",
    "do_not_mass_email",
    "no_email",
    "invalid_email",
    "blocked",
    "no_email_selected",
    "duplicate",
)
FIRST_ID = 91  # so every duplicate (id - 10, from id 107 on) has an original with a smaller id


@dataclass
class Fixture:
    campaign_id: int
    topic_id: int
    accounts: list[int]


def _generate(n: int) -> Fixture:
    """n contacts in two lists (all in one, every fifth also in the other), with the eight
    reasons in 1% each, set-wise in SQL."""
    from django.db import connection, transaction

    from campaigns.models import Campaign, CampaignStep, SendingAccount
    from contacts.models import ContactList, Topic

    common.truncate()
    last = FIRST_ID + n - 1
    with transaction.atomic():
        topic = Topic.objects.create(name="Newsletter")
        other_topic = Topic.objects.create(name="Events")
        everyone = ContactList.objects.create(name="Everyone")
        some = ContactList.objects.create(name="Every fifth")
        accounts = [
            SendingAccount.objects.create(
                name=f"Audience account {k}", from_email=f"sales{k}@leadcenter.example.com"
            )
            for k in (1, 2)
        ]
        campaign = Campaign.objects.create(name="Audience benchmark", topic=topic)
        campaign.lists.add(everyone, some)
        campaign.accounts.add(*accounts)
        CampaignStep.objects.create(
            campaign=campaign, position=1, subject="Hi {{ contact.first_name }}", html_body="x"
        )
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO contacts_contact
                    (id, email, first_name, last_name, company, email_status, invalid_reason,
                     do_not_email, do_not_mass_email, unsubscribed_at, stage, created, updated)
                SELECT i,
                    CASE
                        WHEN i %% 100 = 3 THEN ''
                        WHEN i %% 100 = 7 THEN 'contact' || (i - 10) || '@example.com '
                        WHEN i %% 200 = 104 THEN 'not-an-address-' || i
                        ELSE 'contact' || i || '@example.com'
                    END,
                    'First' || i, 'Last' || i, 'Company ' || (i %% 1000),
                    CASE WHEN i %% 200 = 4 THEN 'invalid' ELSE 'valid' END,
                    CASE WHEN i %% 200 = 4 THEN 'User not found' ELSE '' END,
                    i %% 100 = 1, i %% 100 = 2,
                    CASE WHEN i %% 100 = 0 THEN now() END,
                    'subscriber', now(), now()
                FROM generate_series(%s, %s) AS i
                """,
                [FIRST_ID, last],
            )
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('contacts_contact', 'id'), %s)", [last]
            )
            cursor.execute(
                """
                INSERT INTO contacts_contact_lists (contact_id, contactlist_id)
                SELECT i, %s FROM generate_series(%s, %s) AS i
                UNION ALL
                SELECT i, %s FROM generate_series(%s, %s) AS i WHERE i %% 5 = 0
                """,
                [everyone.pk, FIRST_ID, last, some.pk, FIRST_ID, last],
            )
            # Blocked: the contacts with id % 100 = 5, and as many addresses of no contact.
            cursor.execute(
                """
                INSERT INTO contacts_suppression
                    (email, reason, source, note, created, lift_reason)
                SELECT 'contact' || i || '@example.com', 'hard_bounce', 'bench', '', now(), ''
                FROM generate_series(%s, %s) AS i WHERE i %% 100 = 5
                UNION ALL
                SELECT 'gone' || i || '@example.org', 'manual', 'bench', '', now(), ''
                FROM generate_series(%s, %s) AS i WHERE i %% 100 = 5
                """,
                [FIRST_ID, last, FIRST_ID, last],
            )
            # Opted out of the campaign's topic (id % 100 = 6), and of another topic (50).
            cursor.execute(
                """
                INSERT INTO contacts_contact_opted_out_topics (contact_id, topic_id)
                SELECT i, CASE WHEN i %% 100 = 6 THEN %s ELSE %s END
                FROM generate_series(%s, %s) AS i WHERE i %% 100 IN (6, 50)
                """,
                [topic.pk, other_topic.pk, FIRST_ID, last],
            )
    common.execute_autocommit("VACUUM ANALYZE")
    return Fixture(campaign.pk, topic.pk, [a.pk for a in accounts])


def _fresh_run(fixture: Fixture) -> int:
    """Empty recipients, messages and runs, flush the last phase's writes, launch a run."""
    from campaigns.models import Campaign
    from campaigns.services import campaign_launch

    common.truncate(["campaigns_message", "campaigns_recipient", "campaigns_campaignrun"])
    common.execute_autocommit("CHECKPOINT")
    campaign = Campaign.objects.get(pk=fixture.campaign_id)
    return campaign_launch(campaign=campaign, enqueue=False).pk


def _time_run_prepare(fixture: Fixture) -> float:
    from campaigns.models import CampaignRun
    from campaigns.services import run_prepare

    run = CampaignRun.objects.select_related("campaign").get(pk=_fresh_run(fixture))
    with stopwatch() as elapsed:
        run_prepare(run=run)
    return elapsed[0]


def _time_baseline(fixture: Fixture) -> float:
    from django.conf import settings
    from django.db import connection, transaction
    from django.utils import timezone

    run_id = _fresh_run(fixture)
    reasons = "ARRAY[" + ", ".join(f"'{r}'" for r in REASON_BY_REMAINDER) + "]"
    filtered = f"c.id %% 100 < {len(REASON_BY_REMAINDER)}"
    recipients_sql = f"""
        INSERT INTO campaigns_recipient
            (run_id, contact_id, email, account_id, status, filter_reason, steps_sent)
        SELECT %s, c.id, c.email,
               CASE WHEN {filtered} THEN NULL WHEN c.id %% 2 = 0 THEN %s ELSE %s END,
               CASE WHEN {filtered} THEN 'filtered' ELSE 'pending' END,
               CASE WHEN {filtered} THEN ({reasons})[c.id %% 100 + 1] ELSE '' END,
               0
        FROM contacts_contact c
        WHERE c.id IN (
            SELECT cl.contact_id FROM contacts_contact_lists cl
            JOIN campaigns_campaign_lists ccl ON ccl.contactlist_id = cl.contactlist_id
            WHERE ccl.campaign_id = %s
        )
    """
    # The same statement as run_prepare's for step 1: one queued message per pending recipient,
    # with its contact's owner (Message.owner).
    messages_sql = """
        INSERT INTO campaigns_message
            (recipient_id, run_id, step_id, account_id, message_id, esp_message_id, status,
             attempts, next_attempt_at, smtp_status, smtp_response, created, open_count,
             click_count, owner_id)
        SELECT r.id, r.run_id, %s, r.account_id,
               '<lc.' || CAST(r.id AS TEXT) || '.1.bench@' || %s || '>',
               '', 'queued', 0, %s, '', '', %s, 0, 0, c.owner_id
        FROM campaigns_recipient r JOIN contacts_contact c ON c.id = r.contact_id
        WHERE r.run_id = %s AND r.status = 'pending'
    """
    from campaigns.models import CampaignStep

    step_id = CampaignStep.objects.get(campaign_id=fixture.campaign_id, position=1).pk
    now = timezone.now()
    first, second = fixture.accounts
    with stopwatch() as elapsed:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(recipients_sql, [run_id, first, second, fixture.campaign_id])
            cursor.execute(
                messages_sql,
                [step_id, settings.LEADCENTER_MESSAGE_ID_DOMAIN, now, now, run_id],
            )
    return elapsed[0]


def _rows() -> tuple[int, int, dict[str, int]]:
    """Recipients, messages, and filtered recipients per reason, of the last phase."""
    from django.db.models import Count

    from campaigns.models import Message, Recipient

    by_reason = dict(
        Recipient.objects.exclude(filter_reason="")
        .values_list("filter_reason")
        .annotate(n=Count("pk"))
        .values_list("filter_reason", "n")
    )
    return Recipient.objects.count(), Message.objects.count(), by_reason


@dataclass
class SizeResult:
    contacts: int
    prepare: list[float]
    baseline: list[float]
    rows: tuple[int, int, dict[str, int]]
    baseline_rows: tuple[int, int, dict[str, int]]


def _measure(n: int, repeats: int) -> SizeResult:
    say(f"-- {n:,} contacts: generating ...")
    fixture = _generate(n)
    prepare: list[float] = []
    baseline: list[float] = []
    rows = baseline_rows = (0, 0, {})
    with common.foreign_load(_database_name()) as load:
        for _ in range(repeats):
            baseline.append(_time_baseline(fixture))
            baseline_rows = _rows()
            prepare.append(_time_run_prepare(fixture))
            rows = _rows()
    say(
        f"   run_prepare {', '.join(f'{t:.3f}s' for t in prepare)}; "
        f"baseline {', '.join(f'{t:.3f}s' for t in baseline)}"
    )
    if load["share"] > 0.10:
        say(
            f"   NOTE: {100 * load['share']:.0f}% of the machine's CPU went to processes outside "
            "this benchmark meanwhile: the machine was shared, these timings are noisy."
        )
    return SizeResult(n, prepare, baseline, rows, baseline_rows)


def _database_name() -> str:
    from django.db import connection

    return str(connection.settings_dict["NAME"])


def run(*, quick: bool = False) -> list[Result]:
    common.setup_django("audience")
    common.migrate()
    small_n, large_n = QUICK_SIZES if quick else FULL_SIZES
    say(f"== audience preparation: {small_n:,} and {large_n:,} contacts ==")
    say(
        "baseline: bare INSERT INTO campaigns_recipient ... SELECT FROM contacts_contact (same "
        "list semi-join, same rows,\n  reasons read off the id pattern: no suppression/topic "
        "lookups, no window functions) + run_prepare's\n  INSERT INTO campaigns_message ... "
        "SELECT of the pending recipients, in one transaction."
    )
    small = _measure(small_n, repeats=5)
    large = _measure(large_n, repeats=2 if not quick else 3)

    rows = []
    for size in (small, large):
        recipients, messages, by_reason = size.rows
        best, base = min(size.prepare), min(size.baseline)
        rows.append(
            [
                size.contacts,
                recipients,
                messages,
                sum(by_reason.values()),
                best,
                base,
                best / base,
                "yes" if size.rows == size.baseline_rows else "NO",
            ]
        )
    say(
        table(
            [
                "contacts",
                "recipients",
                "messages",
                "filtered",
                "run_prepare s",
                "baseline s",
                "ratio",
                "same rows",
            ],
            rows,
        )
    )
    reasons = large.rows[2]
    say(
        "filtered by reason (large size): "
        + ", ".join(f"{r} {reasons.get(r, 0):,}" for r in REASON_BY_REMAINDER)
    )
    ratio = min(large.prepare) / min(large.baseline)
    scaling = min(large.prepare) / min(small.prepare)
    baseline_scaling = min(large.baseline) / min(small.baseline)
    factor = large_n // small_n
    results = [
        Result(
            NAME, f"run_prepare / bare INSERT..SELECT @ {large_n:,}", ratio, RATIO_TARGET, False
        ),
        Result(
            NAME,
            f"run_prepare {large_n:,} / {small_n:,} (x{factor} rows)",
            scaling,
            SCALING_TARGET,
            False,
        ),
    ]
    say(
        f"ratio run_prepare/baseline at {large_n:,}: {ratio:.3f} (target <= {RATIO_TARGET}) "
        f"{results[0].verdict}"
    )
    say(
        f"scaling {small_n:,} -> {large_n:,}: {scaling:.1f}x (target <= {SCALING_TARGET:g}x; "
        f"linear would be {factor}x) {results[1].verdict}"
    )
    say(
        f"  for comparison, the baseline's own scaling: {baseline_scaling:.1f}x (what the same "
        "writes cost PostgreSQL as the tables outgrow its caches)"
    )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.audience")
    parser.add_argument("--quick", action="store_true", help="100,000 and 1,000 contacts")
    args = parser.parse_args(argv)
    for result in run(quick=args.quick):
        say(result.line())


if __name__ == "__main__":
    main()
