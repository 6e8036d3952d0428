"""The sending limits read counters instead of counting the day's emails.

selectors.account_capacity counted, before every batch, the account's emails claimed since its
midnight and within the last minute: a range of an index as long as the day's volume (1.4 ms
a batch at 10,000 a day, and linear in it). The sender now counts each claim in AccountUsage
(one row per account and day, one per account and second) in the claim's transaction.

The backfill counts what the old count would have seen now: today's claims per account (since
midnight in its time zone) and, per second, the last two minutes' claims. Each message counts
once, as before; from now on a retry counts again, as it does at the provider. Reversible: the
table goes.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone


def _day_start(zone_name: str, now):
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return now.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)


def backfill(apps, schema_editor) -> None:
    SendingAccount = apps.get_model("campaigns", "SendingAccount")
    Message = apps.get_model("campaigns", "Message")
    AccountUsage = apps.get_model("campaigns", "AccountUsage")
    db = schema_editor.connection.alias
    now = timezone.now()
    rows = []
    for account in SendingAccount.objects.using(db).only("pk", "timezone"):
        day = _day_start(account.timezone, now)
        claimed = Message.objects.using(db).filter(account=account, claimed_at__gte=day)
        today = claimed.count()
        if today:
            rows.append(AccountUsage(account=account, span="day", start=day, claimed=today))
        seconds = Counter(
            at.replace(microsecond=0)
            for at in claimed.filter(claimed_at__gte=now - timedelta(minutes=2)).values_list(
                "claimed_at", flat=True
            )
        )
        rows += [
            AccountUsage(account=account, span="second", start=second, claimed=count)
            for second, count in seconds.items()
        ]
    AccountUsage.objects.using(db).bulk_create(rows)


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0013_tally_by_first_sent_day")]

    operations = [
        migrations.CreateModel(
            name="AccountUsage",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "span",
                    models.CharField(
                        choices=[("day", "Day"), ("second", "Second")], max_length=6
                    ),
                ),
                ("start", models.DateTimeField()),
                ("claimed", models.PositiveIntegerField(default=0)),
                (
                    "account",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="usage",
                        to="campaigns.sendingaccount",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("account", "span", "start"), name="account_usage_unique"
                    )
                ],
            },
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
