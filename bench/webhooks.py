"""ESP webhook events: anymail's tracking signal receiver and the apply task, against a raw
batched INSERT of the same event rows.

What is measured: 1,000 anymail tracking events (`--quick`: 200) about 550 (110) messages
really in the database, as one webhook request carrying them all would deliver them: each
passes through `tracking.webhooks.tracking_received` (anymail's event -> our InboundEvent ->
a JSON-safe payload), then `webhook_events_apply` applies the batch inline, as the django-q2
task does: each event deduplicated, matched to its message by the ESP's message id, classified
when it is a failure, and applied through the state machine (event row, message status and
first-seen times, recipient first-seen times, and for the hard bounces a Rejection, the
contact marked invalid and a suppression). The mix: 500 delivered, 300 opened, 150 clicked,
30 hard bounces (550 5.1.1) and 20 deferrals (452 4.2.2), in that order.

Baseline: TrackingEvent.objects.bulk_create of the same 1,000 rows (same message, type,
source, time, dedupe key, address, raw payload, URL and user agent), in one transaction.

Before every timed phase the database is put back as it was (events, rejections and
suppressions deleted, messages, recipients and contacts reset) and a CHECKPOINT flushes the
previous phase's writes. Each side is timed several times, alternating; the best time counts.

Target: baseline time / webhook time >= 0.25 (the webhook path at most 4x the raw INSERT).

    python -m bench.webhooks [--quick]

Own database: DATABASE_URL, default postgres://postgres@127.0.0.1:5432/leadcenter_bench_webhooks
(created when missing, then migrated).
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta

from bench import common
from bench.common import Result, say, stopwatch, table

NAME = "webhooks"
TARGET = 0.25
DATABASE_URL = "postgres://postgres@127.0.0.1:5432/leadcenter_bench_webhooks"
# (event, how many, Mailgun event-data extras); delivered/opened/clicked go to the first
# messages, failures to messages of their own.
MIX = (
    ("delivered", 500),
    ("opened", 300),
    ("clicked", 150),
    ("failed-permanent", 30),
    ("failed-temporary", 20),
)


@dataclass
class Fixture:
    message_pks: list[int]
    events: list  # AnymailTrackingEvent


def _setup() -> None:
    os.environ.setdefault("DATABASE_URL", DATABASE_URL)
    common.bench_environ()
    common.ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.conf import settings

    if "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        raise SystemExit("The benchmarks need PostgreSQL.")
    settings.LEADCENTER_WEBHOOKS_SYNC = True
    common.migrate()


def _scale(quick: bool) -> list[tuple[str, int]]:
    return [(kind, n // 5 if quick else n) for kind, n in MIX]


def _generate(quick: bool) -> Fixture:
    """Messages sent a minute ago through an ESP account, set-wise."""
    from django.db import transaction
    from django.utils import timezone

    from campaigns.models import (
        Campaign,
        CampaignRun,
        CampaignStep,
        Message,
        Recipient,
        SendingAccount,
    )
    from contacts.models import Contact

    common.truncate()
    mix = _scale(quick)
    engaged = max(n for _kind, n in mix)  # delivered events: one per message
    failures = sum(n for kind, n in mix if kind.startswith("failed"))
    total = engaged + failures
    sent_at = timezone.now() - timedelta(minutes=1)
    with transaction.atomic():
        account = SendingAccount.objects.create(
            name="Mailgun", from_email="sales@leadcenter.example.com", esp="mailgun"
        )
        campaign = Campaign.objects.create(name="Webhook benchmark", state="active")
        step = CampaignStep.objects.create(campaign=campaign, position=1, subject="Hi")
        run = CampaignRun.objects.create(campaign=campaign, status="running")
        contacts = Contact.objects.bulk_create(
            Contact(email=f"c{i}@example.com", first_name=f"C{i}") for i in range(total)
        )
        recipients = Recipient.objects.bulk_create(
            Recipient(run=run, contact=c, email=c.email, account=account, status="sent")
            for c in contacts
        )
        messages = Message.objects.bulk_create(
            Message(
                recipient=r,
                run=run,
                step=step,
                account=account,
                message_id=f"<lc.{r.pk}.1.bench@leadcenter.example.com>",
                esp_message_id=f"<{r.pk}.mailgun@mg.leadcenter.example.com>",
                status="sent",
                sent_at=sent_at,
                attempts=1,
            )
            for r in recipients
        )
    common.execute_autocommit("VACUUM ANALYZE")
    pks = [m.pk for m in messages]
    emails = {m.pk: m.recipient.email for m in messages}
    return Fixture(pks, _events(mix, pks, emails, engaged))


def _events(mix, pks: list[int], emails: dict[int, str], engaged: int) -> list:
    """Mailgun webhook payloads as anymail parses them (its own parser, untimed)."""
    from anymail.webhooks.mailgun import MailgunTrackingWebhookView
    from django.utils import timezone

    view = MailgunTrackingWebhookView(webhook_signing_key="bench")
    now = timezone.now().timestamp()
    failure_pks = iter(pks[engaged:])
    events = []
    for kind, n in mix:
        for i in range(n):
            pk = next(failure_pks) if kind.startswith("failed") else pks[i]
            data = {
                "event": kind.split("-")[0],
                "id": uuid.uuid4().hex[:22],
                "timestamp": now + len(events) / 1000,
                "recipient": emails[pk],
                "message": {"headers": {"message-id": f"{pk}.mailgun@mg.leadcenter.example.com"}},
                "client-info": {"user-agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)"},
            }
            if kind == "clicked":
                data["url"] = "https://example.com/offer"
            if kind == "failed-permanent":
                data.update(severity="permanent", reason="bounce")
                data["delivery-status"] = {
                    "code": 550,
                    "message": "550 5.1.1 The email account that you tried to reach does "
                    "not exist.",
                    "description": "",
                }
            if kind == "failed-temporary":
                data.update(severity="temporary", reason="generic")
                data["delivery-status"] = {
                    "code": 452,
                    "message": "452 4.2.2 The email account is over quota.",
                    "description": "",
                }
            body = {"signature": {"token": uuid.uuid4().hex}, "event-data": data}
            events.append(view.esp_to_anymail_event(body))
    return events


def _reset() -> None:
    """Back to "every message sent, nothing heard yet"."""
    from django.db import transaction

    from campaigns.models import Message, Recipient
    from contacts.models import Contact, Suppression
    from tracking.models import Rejection, TrackingEvent

    with transaction.atomic():
        Rejection.objects.all().delete()
        TrackingEvent.objects.all()._raw_delete("default")
        Suppression.objects.all().delete()
        Message.objects.update(
            status="sent",
            status_changed_at=None,
            delivered_at=None,
            opened_at=None,
            clicked_at=None,
            replied_at=None,
            unsubscribed_at=None,
            complained_at=None,
            open_count=0,
            click_count=0,
            next_attempt_at=None,
        )
        Recipient.objects.update(
            status="sent",
            next_step_at=None,
            last_action_at=None,
            delivered_at=None,
            opened_at=None,
            clicked_at=None,
            bounced_at=None,
        )
        Contact.objects.update(email_status="valid", invalid_reason="", invalid_at=None)
    common.execute_autocommit("CHECKPOINT")


def _time_webhooks(fixture: Fixture) -> tuple[float, list[str]]:
    from tracking import webhooks

    _reset()
    with stopwatch() as elapsed:
        with webhooks.collecting() as batch:
            for event in fixture.events:
                webhooks.tracking_received(None, event=event, esp_name="Mailgun")
        outcomes = webhooks.webhook_events_apply(batch)
    return elapsed[0], outcomes


def _baseline_rows(fixture: Fixture) -> list:
    """The TrackingEvent rows the webhook path writes, built outside the timed phase."""
    from tracking import webhooks
    from tracking.models import TrackingEvent

    by_esp_id = {f"<{pk}.mailgun@mg.leadcenter.example.com>": pk for pk in fixture.message_pks}
    rows = []
    for event in fixture.events:
        parsed = webhooks.tracking_event_parse(event, "Mailgun")
        rows.append(
            TrackingEvent(
                message_id=by_esp_id.get(parsed.esp_message_id),
                type=parsed.type,
                source=parsed.source,
                occurred_at=parsed.occurred_at,
                dedupe_key=parsed.dedupe_key,
                email=parsed.recipient,
                url=parsed.url,
                user_agent=parsed.user_agent,
                detail=parsed.diagnostic,
                raw=parsed.raw,
            )
        )
    return rows


def _time_baseline(fixture: Fixture) -> float:
    from django.db import transaction

    from tracking.models import TrackingEvent

    rows = _baseline_rows(fixture)
    _reset()
    with stopwatch() as elapsed, transaction.atomic():
        TrackingEvent.objects.bulk_create(rows)
    return elapsed[0]


def _check(fixture: Fixture, outcomes: list[str]) -> dict[str, int]:
    """What the last webhook phase left: every event recorded once, the statuses expected."""
    from django.db.models import Count

    from campaigns.models import Message
    from contacts.models import Contact
    from tracking.models import Rejection, TrackingEvent

    events = TrackingEvent.objects.filter(source="webhook:mailgun").count()
    statuses = dict(Message.objects.values_list("status").annotate(n=Count("pk")))
    summary = {
        "events recorded": events,
        "errors": outcomes.count("error"),
        "duplicates": outcomes.count("duplicate"),
        "hard rejections": Rejection.objects.filter(kind="hard").count(),
        "contacts invalid": Contact.objects.filter(email_status="invalid").count(),
        **{f"messages {s}": n for s, n in sorted(statuses.items())},
    }
    if events != len(fixture.events) or summary["errors"]:
        raise SystemExit(f"webhook phase did not record every event once: {json.dumps(summary)}")
    return summary


def run(*, quick: bool = False) -> list[Result]:
    _setup()
    fixture = _generate(quick)
    repeats = 3 if quick else 5
    say(f"== ESP webhooks: {len(fixture.events):,} Mailgun events about "
        f"{len(fixture.message_pks):,} messages ==")  # fmt: skip
    say("baseline: TrackingEvent.objects.bulk_create of the same rows, in one transaction")
    ours: list[float] = []
    base: list[float] = []
    outcomes: list[str] = []
    for _ in range(repeats):
        elapsed, outcomes = _time_webhooks(fixture)
        ours.append(elapsed)
        base.append(_time_baseline(fixture))
    # The last phase was the baseline's: run the webhook side once more to check its result.
    _elapsed, outcomes = _time_webhooks(fixture)
    summary = _check(fixture, outcomes)
    best, baseline = min(ours), min(base)
    ratio = baseline / best
    n = len(fixture.events)
    say(table(
        ["events", "webhooks s", "per event ms", "baseline s", "ratio (baseline/webhooks)"],
        [[n, best, best / n * 1000, baseline, ratio]],
    ))  # fmt: skip
    say("after the webhook phase: " + ", ".join(f"{k} {v:,}" for k, v in summary.items()))
    result = Result(NAME, f"bulk INSERT / receiver+task @ {n:,} events", ratio, TARGET, True)
    say(result.line())
    return [result]


def main(*, quick: bool = False) -> list[tuple[str, float, float | None, bool]]:
    """(name, value, target, passed) for each figure."""
    return [(r.name, r.value, r.target, r.passed) for r in run(quick=quick)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks")
    parser.add_argument("--quick", action="store_true", help="200 events instead of 1,000")
    main(quick=parser.parse_args().quick)
