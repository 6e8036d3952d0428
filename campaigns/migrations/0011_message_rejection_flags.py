"""Message.rejection_flags: each email's rejection categories and kinds, as bits, kept by
database triggers on tracking_rejection, and one partial index per bit for the Sent emails list.

Why: the list's rejection filter was an EXISTS over tracking_rejection. Newest first, the
planner walks message_created and probes the rejections of every email until it has a page;
for a rare category ("no answer") that is most of the table, so the page cost grew with it
(2.33x the 10,000-email page at 1,000,000 emails). With the bits on the email, a filter is a
test of its own column, and message_rej_<flag> holds, in the list's order (-created, -id), only
the emails with that flag: a page or a capped count reads a few hundred index entries whatever
the size of the table.

The bits are those of Recipient.rejections for the categories (frozen in migration 0007), plus
64 for a hard and 128 for a soft rejection, so the kind filter keeps Rejection.kind's meaning.
They are kept as 0007 keeps Recipient.rejections: by the database, in the same transaction as
each rejection written, moved or deleted, whatever wrote it (the single-event and batch writers
of tracking.services, imports, Django's deletion collector). A deleted email takes its bits
with it. PostgreSQL's TRUNCATE of tracking_rejection (which fires no row trigger) clears them.

The column is added with plain `ALTER TABLE ... ADD COLUMN ... DEFAULT 0 NOT NULL` on both
databases: Django's AddField rebuilds the table on SQLite for a NOT NULL column, which would drop
the report triggers of migration 0007 on campaigns_message (see 0010). On PostgreSQL it is a
catalogue change only; the backfill then rewrites the rejected emails alone.

The SQL is frozen here; a later change of the bits is a new migration. campaigns.models
(MESSAGE_REJECTION_FLAGS, rejection_flag) holds the same map and the same condition.
"""

from __future__ import annotations

from django.db import migrations, models
from django.db.models import F, Q
from django.db.models.lookups import GreaterThan

CATEGORY_BITS = {
    "user_not_found": 1,
    "domain_not_found": 2,
    "mailbox_full": 4,
    "no_answer": 8,
    "spam_blocked": 16,
    "unspecified": 32,
}
KIND_BITS = {"hard": 64, "soft": 128}
FLAGS = {**KIND_BITS, **CATEGORY_BITS}


def _case(expr: str, bits: dict[str, int]) -> str:
    whens = " ".join(f"WHEN '{value}' THEN {bit}" for value, bit in bits.items())
    return f"(CASE {expr} {whens} ELSE 0 END)"


def bits_of(row: str) -> str:
    """The flags one rejection row gives its email."""
    return f"({_case(f'{row}.category', CATEGORY_BITS)} | {_case(f'{row}.kind', KIND_BITS)})"


# An email's flags rebuilt from all its rejections (distinct bits summed = OR, on both
# databases; the categories and the kinds summed apart, as a bit may come from either).
FLAGS_OF_MESSAGE = f"""(
    SELECT COALESCE(SUM(DISTINCT {_case('rj.category', CATEGORY_BITS)}), 0)
         + COALESCE(SUM(DISTINCT {_case('rj.kind', KIND_BITS)}), 0)
    FROM tracking_rejection rj WHERE rj.message_id = campaigns_message.id
)"""


def recompute(message_id_sql: str) -> str:
    return (
        f"UPDATE campaigns_message SET rejection_flags = {FLAGS_OF_MESSAGE} "
        f"WHERE id = {message_id_sql}"
    )


def add_bits(row: str) -> str:
    bits = bits_of(row)
    return (
        f"UPDATE campaigns_message SET rejection_flags = rejection_flags | {bits} "
        f"WHERE id = {row}.message_id AND (rejection_flags & {bits}) <> {bits}"
    )


ADD_COLUMN = "ALTER TABLE campaigns_message ADD COLUMN rejection_flags smallint DEFAULT 0 NOT NULL"
DROP_COLUMN = "ALTER TABLE campaigns_message DROP COLUMN rejection_flags"
BACKFILL = (
    f"UPDATE campaigns_message SET rejection_flags = {FLAGS_OF_MESSAGE} "
    "WHERE id IN (SELECT message_id FROM tracking_rejection WHERE message_id IS NOT NULL)"
)

# --- PostgreSQL ----------------------------------------------------------------------------


def _pg_function(name: str, body: str) -> str:
    return f"""
    CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        {body}
        RETURN NULL;
    END;
    $body$;
    """


PG_FORWARD = [
    _pg_function("campaigns_message_flags_insert", f"{add_bits('NEW')};"),
    _pg_function(
        "campaigns_message_flags_recompute",
        f"""
        IF TG_OP = 'UPDATE' THEN
            IF NEW.message_id IS NOT NULL THEN
                {recompute('NEW.message_id')};
            END IF;
        END IF;
        IF OLD.message_id IS NOT NULL THEN
            {recompute('OLD.message_id')};
        END IF;
        """,
    ),
    _pg_function(
        "campaigns_message_flags_truncate",
        "UPDATE campaigns_message SET rejection_flags = 0 WHERE rejection_flags <> 0;",
    ),
    """
    CREATE TRIGGER campaigns_message_flags_insert AFTER INSERT ON tracking_rejection
    FOR EACH ROW WHEN (NEW.message_id IS NOT NULL)
    EXECUTE FUNCTION campaigns_message_flags_insert();
    """,
    """
    CREATE TRIGGER campaigns_message_flags_delete AFTER DELETE ON tracking_rejection
    FOR EACH ROW WHEN (OLD.message_id IS NOT NULL)
    EXECUTE FUNCTION campaigns_message_flags_recompute();
    """,
    """
    CREATE TRIGGER campaigns_message_flags_update
    AFTER UPDATE OF message_id, kind, category ON tracking_rejection
    FOR EACH ROW WHEN ((OLD.message_id, OLD.kind, OLD.category) IS DISTINCT FROM
                       (NEW.message_id, NEW.kind, NEW.category))
    EXECUTE FUNCTION campaigns_message_flags_recompute();
    """,
    """
    CREATE TRIGGER campaigns_message_flags_truncate AFTER TRUNCATE ON tracking_rejection
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_message_flags_truncate();
    """,
]
PG_TRIGGERS = [
    "campaigns_message_flags_insert",
    "campaigns_message_flags_delete",
    "campaigns_message_flags_update",
    "campaigns_message_flags_truncate",
]
PG_BACKWARD = [
    *(f"DROP TRIGGER IF EXISTS {name} ON tracking_rejection;" for name in PG_TRIGGERS),
    *(
        f"DROP FUNCTION IF EXISTS {name}();"
        for name in (
            "campaigns_message_flags_insert",
            "campaigns_message_flags_recompute",
            "campaigns_message_flags_truncate",
        )
    ),
]

# --- SQLite --------------------------------------------------------------------------------

SQLITE_FORWARD = [
    f"""
    CREATE TRIGGER campaigns_message_flags_insert AFTER INSERT ON tracking_rejection
    WHEN NEW.message_id IS NOT NULL
    BEGIN {add_bits('NEW')}; END;
    """,
    f"""
    CREATE TRIGGER campaigns_message_flags_delete AFTER DELETE ON tracking_rejection
    WHEN OLD.message_id IS NOT NULL
    BEGIN {recompute('OLD.message_id')}; END;
    """,
    f"""
    CREATE TRIGGER campaigns_message_flags_update
    AFTER UPDATE OF message_id, kind, category ON tracking_rejection
    WHEN OLD.message_id IS NOT NEW.message_id OR OLD.kind IS NOT NEW.kind
      OR OLD.category IS NOT NEW.category
    BEGIN
        {recompute('OLD.message_id')};
        {recompute('NEW.message_id')};
    END;
    """,
]
SQLITE_BACKWARD = [
    f"DROP TRIGGER IF EXISTS {name};" for name in PG_TRIGGERS if not name.endswith("truncate")
]


def add_column(apps, schema_editor) -> None:
    schema_editor.execute(ADD_COLUMN, params=None)


def drop_column(apps, schema_editor) -> None:
    schema_editor.execute(DROP_COLUMN, params=None)


def forward(apps, schema_editor) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        # No rejection may be written between the backfill and the triggers.
        schema_editor.execute(
            "LOCK TABLE tracking_rejection IN SHARE ROW EXCLUSIVE MODE", params=None
        )
        statements = [BACKFILL, *PG_FORWARD]
    elif vendor == "sqlite":
        statements = [BACKFILL, *SQLITE_FORWARD]
    else:  # pragma: no cover - LeadCenter runs on PostgreSQL or SQLite (DESIGN.md "Stack")
        raise NotImplementedError(f"rejection flags have no triggers for {vendor}")
    for sql in statements:
        schema_editor.execute(sql, params=None)


def backward(apps, schema_editor) -> None:
    vendor = schema_editor.connection.vendor
    for sql in PG_BACKWARD if vendor == "postgresql" else SQLITE_BACKWARD:
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0010_sendperf_no_duplicate_indexes"),
        ("tracking", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(add_column, drop_column)],
            state_operations=[
                migrations.AddField(
                    model_name="message",
                    name="rejection_flags",
                    field=models.SmallIntegerField(db_default=0, default=0, editable=False),
                ),
            ],
        ),
        migrations.RunPython(forward, backward),
        # After the backfill, so it does not update them row by row.
        *(
            migrations.AddIndex(
                model_name="message",
                index=models.Index(
                    fields=["-created", "-id"],
                    condition=Q(GreaterThan(F("rejection_flags").bitand(bit), 0)),
                    name=f"message_rej_{flag}",
                ),
            )
            for flag, bit in FLAGS.items()
        ),
    ]
