"""Two indexes fewer on tracking_trackingevent, which the sender inserts two rows into per email
(claimed, then sent) and the tracking writers one per event:

- the single-column index on message_id: event_message_time (message_id, occurred_at DESC)
  leads with it and serves every lookup by message, the cascade on delete included;
- the varchar_pattern_ops twin of the unique dedupe_key (PostgreSQL): nothing searches dedupe
  keys with LIKE 'prefix%'. The unique index stays, declared in Meta.constraints; on PostgreSQL
  its constraint takes that name.

By name, not AlterField (leadcenter.schema says why: on SQLite it would drop the report
triggers on this table).
"""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models

from leadcenter.schema import index_create, indexes_drop, unique_rename

TABLE = "tracking_trackingevent"
DEDUPE_KEY_UNIQUE = "event_dedupe_key_unique"


def forward(apps, schema_editor) -> None:
    indexes_drop(schema_editor, TABLE, "message_id")
    indexes_drop(schema_editor, TABLE, "dedupe_key")
    unique_rename(schema_editor, TABLE, "dedupe_key", DEDUPE_KEY_UNIQUE)


def backward(apps, schema_editor) -> None:
    index_create(schema_editor, TABLE, "message_id")
    index_create(schema_editor, TABLE, "dedupe_key", like=True)
    unique_rename(schema_editor, TABLE, "dedupe_key", "tracking_trackingevent_dedupe_key_key")


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0011_message_rejection_flags"),
        ("tracking", "0002_bounce_mailbox"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forward, backward)],
            state_operations=[
                migrations.AlterField(
                    model_name="trackingevent",
                    name="dedupe_key",
                    field=models.CharField(max_length=255),
                ),
                migrations.AlterField(
                    model_name="trackingevent",
                    name="message",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="Empty when the event matched no message.",
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="events",
                        to="campaigns.message",
                    ),
                ),
                migrations.AddConstraint(
                    model_name="trackingevent",
                    constraint=models.UniqueConstraint(
                        fields=("dedupe_key",), name=DEDUPE_KEY_UNIQUE
                    ),
                ),
            ],
        ),
    ]
