"""Bounce processing: DSN files read, parsed, matched and recorded, in messages per second.

What is measured: `tracking.bounces.bounces_process` over N bounce files on disk (10,000;
`--quick` 1,000), each an RFC 3464 DSN for one message we sent, made from the checked-in
fixtures in tracking/tests/fixtures/bounces (Postfix 5.1.1 40%, Gmail 550-5.1.1 15%, Microsoft
365 5.1.10 15%, Sendmail 5.2.2 mailbox full 15%, Postfix 4.4.1 delay notice 15%), filled with
each message's VERP address, Message-ID and recipient. For each file: read, parse (flufl.bounce
and our RFC 3464 reader), match (VERP), deduplicate, classify, and apply through the state
machine on PostgreSQL: the event row, the Rejection, the message's status, and for the hard
ones the contact marked invalid and suppressed; the events of FILE_BATCH files at a time,
set-wise, as `process_bounces FILE ...` records them. The N messages are prepared beforehand by
`campaign_launch` + `run_prepare` and moved to `sent` by the state machine (not timed).

Also shown, for context (no targets): `bounce_parse` alone (no database), reading the same files
a second time (everything is a duplicate, nothing is recorded), and the raw cost of reading each
file and `email.message_from_bytes` on it, the floor any bounce processor pays. The ratio
printed is pipeline msgs/s over that baseline's msgs/s.

It uses its own database (default postgres://postgres@127.0.0.1:5432/leadcenter_bench_bounces,
created and migrated when missing; DATABASE_URL overrides it) and empties LeadCenter's tables.

    python -m bench.bounces [--quick]
"""

from __future__ import annotations

import argparse
import email
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import common
from bench.common import say, table

NAME = "bounces"
DATABASE_URL = "postgres://postgres@127.0.0.1:5432/leadcenter_bench_bounces"
FULL_MESSAGES = 10_000
QUICK_MESSAGES = 1_000
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tracking" / "tests" / "fixtures" / "bounces"
# fixture -> share of the files
MIX = [
    ("postfix_user_unknown.eml", 40),
    ("gmail_address_not_found.eml", 15),
    ("exchange_recipient_not_found.eml", 15),
    ("sendmail_mailbox_full.eml", 15),
    ("postfix_delayed.eml", 15),
]
HARD = {"postfix_user_unknown.eml", "gmail_address_not_found.eml",
        "exchange_recipient_not_found.eml"}  # fmt: skip

Row = tuple[str, float, float | None, bool]


def _setup(n: int) -> list[tuple[int, str, str]]:
    """N contacts, one campaign, one run prepared; every message moved to sent through the
    state machine. Returns (message pk, Message-ID, address) for each."""
    from django.utils import timezone

    from campaigns.models import Campaign, CampaignStep, Message, SendingAccount
    from campaigns.services import campaign_launch, run_prepare
    from contacts.models import Contact, ContactList
    from tracking.models import TrackingEvent
    from tracking.services import messages_transition

    common.truncate()
    contact_list = ContactList.objects.create(name="Bounce benchmark")
    Contact.objects.bulk_create(
        (
            Contact(email=f"lead{i}@customer{i % 97}.example.com", first_name=f"First{i}")
            for i in range(n)
        ),
        batch_size=5000,
    )
    through = Contact.lists.through
    through.objects.bulk_create(
        (
            through(contact_id=pk, contactlist_id=contact_list.pk)
            for pk in Contact.objects.values_list("pk", flat=True)
        ),
        batch_size=5000,
    )
    account = SendingAccount.objects.create(
        name="Bounce benchmark",
        from_email="sales@leadcenter.example.com",
        smtp_host="127.0.0.1",
        return_path="bounces@leadcenter.example.com",
    )
    campaign = Campaign.objects.create(name="Bounce benchmark")
    campaign.lists.add(contact_list)
    campaign.accounts.add(account)
    CampaignStep.objects.create(campaign=campaign, position=1, subject="Step 1 for Ada")
    run = run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))
    ids = list(Message.objects.filter(run=run).values_list("pk", flat=True))
    now = timezone.now()
    for start in range(0, len(ids), 5000):
        batch = ids[start : start + 5000]
        for from_status, status, event in (
            ("queued", "sending", TrackingEvent.Type.CLAIMED),
            ("sending", "sent", TrackingEvent.Type.SENT),
        ):
            messages_transition(
                message_ids=batch,
                from_status=from_status,
                status=status,
                event_type=event,
                source="system",
                occurred_at=now,
            )
    rows = list(
        Message.objects.filter(run=run, status="sent")
        .order_by("pk")
        .values_list("pk", "message_id", "recipient__email")
    )
    if len(rows) != n:
        raise SystemExit(f"set-up went wrong: {len(rows)} sent messages, expected {n}")
    return rows


def _write_files(rows: list[tuple[int, str, str]], directory: Path) -> dict[str, int]:
    """One bounce file per message, the fixtures in the MIX shares (a fixed shuffle)."""
    from email.utils import formatdate

    from tracking.tokens import verp_address

    templates = {name: (FIXTURES / name).read_bytes() for name, _ in MIX}
    names = [name for name, share in MIX for _ in range(share)]
    rng = random.Random(20261124)
    counts = {name: 0 for name, _ in MIX}
    date = formatdate().encode()
    for n, (pk, message_id, address) in enumerate(rows):
        name = rng.choice(names)
        counts[name] += 1
        raw = (
            templates[name]
            .replace(b"{{VERP}}", verp_address("bounces@leadcenter.example.com", pk).encode())
            .replace(b"{{MESSAGE_ID}}", message_id.encode())
            .replace(b"{{RECIPIENT}}", address.encode())
            .replace(b"{{DATE}}", date)
            # Each bounce has its own Message-ID, as each MTA's does.
            .replace(b"Message-Id: <", b"Message-Id: <%d." % n)
            .replace(b"Message-ID: <6", b"Message-ID: <%d.6" % n)
            .replace(b"Message-ID:\n <", b"Message-ID:\n <%d." % n)
        )
        (directory / f"{n:06d}.eml").write_bytes(raw)
    return counts


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _best_of(runs: int, work: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def run(*, quick: bool = False) -> list[Row]:
    os.environ.setdefault("DATABASE_URL", DATABASE_URL)
    common.setup_django()
    common.migrate()

    from django.db.models import Count

    from campaigns.models import Message
    from tracking.bounces import FILE_BATCH, bounce_parse, bounces_process, file_messages
    from tracking.models import TrackingEvent

    n = QUICK_MESSAGES if quick else FULL_MESSAGES
    say(f"bounces: {n:,} DSN files, {os.environ['DATABASE_URL'].rsplit('/', 1)[-1]}")
    rows = _setup(n)
    with tempfile.TemporaryDirectory(prefix="leadcenter-bounces-") as tmp:
        directory = Path(tmp)
        counts = _write_files(rows, directory)
        paths = sorted(directory.iterdir())

        def baseline() -> None:
            for path in paths:
                email.message_from_bytes(path.read_bytes())

        def parse_only() -> None:
            for path in paths:
                bounce_parse(path.read_bytes())

        baseline_s = _best_of(3, baseline)
        parse_s = _best_of(2, parse_only)
        started, cpu = time.perf_counter(), time.process_time()
        report = bounces_process(messages=file_messages(paths), batch=FILE_BATCH)
        pipeline_s = time.perf_counter() - started
        # This process's own CPU: on a busy machine the wall time also holds waiting for a core.
        pipeline_cpu = time.process_time() - cpu
        started = time.perf_counter()
        again = bounces_process(messages=file_messages(paths), batch=FILE_BATCH)
        again_s = time.perf_counter() - started

    hard = sum(c for name, c in counts.items() if name in HARD)
    expected = {
        "bounced_hard": hard,
        "bounced_soft": counts["sendmail_mailbox_full.eml"],
        "deferred": counts["postfix_delayed.eml"],
        "unmatched": 0,
        "unknown": 0,
    }
    got = {key: getattr(report, key) for key in expected}
    if got != expected or again.duplicates != n:
        raise SystemExit(f"wrong outcome: {got} (expected {expected}), {again.duplicates} dups")
    statuses = dict(Message.objects.values_list("status").annotate(n=Count("pk")))
    if statuses.get("bounced") != hard:
        raise SystemExit(f"wrong statuses after processing: {statuses}")
    events = TrackingEvent.objects.filter(source="dsn").count()

    pipeline = _rate(n, pipeline_s)
    base = _rate(n, baseline_s)
    results: list[Row] = [
        ("process_bounces pipeline (msgs/s)", pipeline, None, True),
        ("bounce_parse only, no database (msgs/s)", _rate(n, parse_s), None, True),
        ("same files again, all duplicates (msgs/s)", _rate(n, again_s), None, True),
        ("baseline: read + email.message_from_bytes (msgs/s)", base, None, True),
        ("pipeline / baseline", pipeline / base, None, True),
    ]
    say(
        table(
            ["measure", "value", "seconds"],
            [
                (results[0][0], pipeline, pipeline_s),
                (results[1][0], results[1][1], parse_s),
                (results[2][0], results[2][1], again_s),
                (results[3][0], base, baseline_s),
            ],
        )
    )
    say(
        f"pipeline CPU in this process: {pipeline_cpu:.1f}s of {pipeline_s:.1f}s wall "
        f"({_rate(n, pipeline_cpu):,.0f} msgs per CPU-second; the rest is PostgreSQL and "
        "waiting)"
    )
    say(f"outcome: {report.summary()}; {events:,} dsn events; statuses {statuses}")
    say(
        f"ratio: the pipeline runs at {pipeline / base:.3f}x the speed of a bare "
        f"email.message_from_bytes over the same files (1/{base / pipeline:.0f}); no target"
    )
    return results


def main(*, quick: bool = False) -> list[Row]:
    return run(quick=quick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bounces")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES:,} files")
    args = parser.parse_args()
    main(quick=args.quick)
