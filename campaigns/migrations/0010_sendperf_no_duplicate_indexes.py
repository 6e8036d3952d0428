"""No single-column index where a composite index already leads with the column.

The sender changes a message's status twice per email (claimed, then sent) and a status
change is never a HOT update (status is indexed), so each one writes an entry into every index
of campaigns_message; the recipient's update after each step does the same on
campaigns_recipient. These indexes only duplicated the first column of another one:

- campaigns_message: recipient_id (message_recipient_step), run_id (message_run_status),
  account_id (message_account_claimed), and the varchar_pattern_ops twin of the unique
  message_id (nothing searches it with LIKE 'prefix%'; the unique index stays, now declared in
  Meta.constraints);
- campaigns_recipient: run_id (recipient_run_contact_unique), contact_id (recipient_contact);
- campaigns_runtally: run_id (runtally_run_owner).

And message_due, the dispatcher's index of due messages, gets the id as its last column: the
claim orders by (next_attempt_at, id), so it now reads its batch off the index instead of
sorting every due message of the account at each claim (all of a run's first step share one
next_attempt_at).

The indexes are dropped by name as introspection finds them, not by Django's AlterField: on
SQLite that rebuilds the table, which drops the report triggers of migration 0007 with it, and
on PostgreSQL it drops and re-validates the foreign keys. The unique index on message_id stays;
on PostgreSQL its constraint takes the name Meta.constraints gives it (on SQLite it is part of
the table definition, which is left alone).
"""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models

from leadcenter.schema import index_create, indexes_drop, unique_rename

# (table, column): the single-column, non-unique indexes to drop.
DUPLICATES = [
    ("campaigns_message", "recipient_id"),
    ("campaigns_message", "run_id"),
    ("campaigns_message", "account_id"),
    ("campaigns_message", "message_id"),  # the varchar_pattern_ops one (PostgreSQL only)
    ("campaigns_recipient", "run_id"),
    ("campaigns_recipient", "contact_id"),
    ("campaigns_runtally", "run_id"),
]
MESSAGE_ID_UNIQUE = "message_message_id_unique"


def forward(apps, schema_editor) -> None:
    for table, column in DUPLICATES:
        indexes_drop(schema_editor, table, column)
    unique_rename(schema_editor, "campaigns_message", "message_id", MESSAGE_ID_UNIQUE)


def backward(apps, schema_editor) -> None:
    for table, column in DUPLICATES:
        index_create(schema_editor, table, column, like=column == "message_id")
    unique_rename(
        schema_editor, "campaigns_message", "message_id", "campaigns_message_message_id_key"
    )


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0009_list_search_indexes"),
        ("contacts", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forward, backward)],
            state_operations=[
                migrations.AlterField(
                    model_name="message",
                    name="account",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="messages",
                        to="campaigns.sendingaccount",
                    ),
                ),
                migrations.AlterField(
                    model_name="message",
                    name="message_id",
                    field=models.CharField(max_length=255, verbose_name="Message-ID"),
                ),
                migrations.AlterField(
                    model_name="message",
                    name="recipient",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="messages",
                        to="campaigns.recipient",
                    ),
                ),
                migrations.AlterField(
                    model_name="message",
                    name="run",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="messages",
                        to="campaigns.campaignrun",
                    ),
                ),
                migrations.AlterField(
                    model_name="recipient",
                    name="contact",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="recipients",
                        to="contacts.contact",
                    ),
                ),
                migrations.AlterField(
                    model_name="recipient",
                    name="run",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="recipients",
                        to="campaigns.campaignrun",
                    ),
                ),
                migrations.AlterField(
                    model_name="runtally",
                    name="run",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="campaigns.campaignrun",
                    ),
                ),
                migrations.AddConstraint(
                    model_name="message",
                    constraint=models.UniqueConstraint(
                        fields=("message_id",), name="message_message_id_unique"
                    ),
                ),
            ],
        ),
        migrations.RemoveIndex(model_name="message", name="message_due"),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                condition=models.Q(("status__in", ["queued", "soft_bounced"])),
                fields=["account", "next_attempt_at", "id"],
                name="message_due",
            ),
        ),
    ]
