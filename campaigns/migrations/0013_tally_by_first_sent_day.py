"""Report counters per day: Recipient.first_sent_on, and RunTally keyed by (run, owner, day).

Why: a campaign summary restricted to a date range was counted live from the rows (7.8 s for a
run of a million recipients, against milliseconds from the counters), so it failed the issue's
"at most 1.5x the page with 10,000" rule. Now a range means a cohort: the recipients FIRST
EMAILED on those days (the day their first email was sent or refused, in the admin's time zone,
settings.TIME_ZONE), with their results to date. That day never changes once set, so the
counters can be kept per day: a dated summary sums the counter rows of the days in range in one
grouped query, the undated pages sum every day, and the Recipients list's `sent_date` filter
selects on the same column, so every figure's link lists exactly its count.

- Recipient.first_sent_on (DateField, NULL until the first email is sent or refused): written
  by campaigns.services when it records an email's outcome (set once, never moved). The
  backfill takes the day of each emailed recipient's earliest email (sent_at, else claimed_at),
  in settings.TIME_ZONE.
- RunTally.day: the recipients' first_sent_on; NO_DAY (0001-01-01) for those not emailed yet
  (pending, filtered). Not NULL, because a NULL would not match itself in the unique key that
  the triggers' upserts rely on (owner_key uses 0 for "none" for the same reason).
- The counter triggers of migration 0007 (and 0008's one-row path on PostgreSQL) are replaced
  by the same ones with the day in the key: a recipient counts in the row of its run, its
  contact's owner and its day; first_sent_on is one of the columns whose change moves it. The
  first outcome of a recipient (NULL -> its day) moves it from the NO_DAY row to its day's row:
  on PostgreSQL the one-row path does that with one two-row upsert. The run-delete trigger is
  unchanged (PostgreSQL); on SQLite it is created again, as are the others, because the change
  of RunTally's unique key rebuilds that table there.

The counters are rebuilt from the rows. Reversible: the day goes, the counters are rebuilt per
(run, owner) and 0007/0008's triggers come back. The SQL is frozen here.
"""

from __future__ import annotations

import datetime
import importlib
import zoneinfo

from django.conf import settings
from django.db import migrations, models

base = importlib.import_module("campaigns.migrations.0007_report_triggers")
one_row = importlib.import_module("campaigns.migrations.0008_recipient_tally_one_row_path")

NO_DAY = datetime.date(1, 1, 1)
COLUMNS, NAMES = base.COLUMNS, base.NAMES
TRACKED = [*base.TRACKED, "{r}.first_sent_on"]


def day_of(r: str, vendor: str) -> str:
    no_day = "DATE '0001-01-01'" if vendor == "postgresql" else "'0001-01-01'"
    return f"COALESCE({r}.first_sent_on, {no_day})"


def flag_values(r: str, sign: int = 1) -> str:
    prefix = "-" if sign < 0 else ""
    return ", ".join(
        f"{prefix}(CASE WHEN {cond.format(r=r)} THEN 1 ELSE 0 END)" for _, cond in COLUMNS
    )


TALLY_INSERT = f"INSERT INTO campaigns_runtally (run_id, owner_key, day, {', '.join(NAMES)})"
TALLY_CONFLICT = (
    "ON CONFLICT (run_id, owner_key, day) DO UPDATE SET "
    + ", ".join(f"{name} = campaigns_runtally.{name} + excluded.{name}" for name in NAMES)
)


def tally_backfill(vendor: str) -> str:
    return f"""
    {TALLY_INSERT}
    SELECT d.run_id, d.owner_key, d.day, {base.sums('d')}
    FROM (
        SELECT r.run_id, COALESCE(c.owner_id, 0) AS owner_key, {day_of('r', vendor)} AS day,
               {base.flags('r')}
        FROM campaigns_recipient r LEFT JOIN contacts_contact c ON c.id = r.contact_id
    ) d
    GROUP BY d.run_id, d.owner_key, d.day
    """


# --- PostgreSQL ----------------------------------------------------------------------------

PG = "postgresql"


def _pg_tally_from(rows_sql: str) -> str:
    """Upsert the sums of `rows_sql` (run_id, contact_id, day, flags...) per (run, owner, day),
    in key order so concurrent statements lock counter rows in the same order."""
    return f"""
        {TALLY_INSERT}
        SELECT d.run_id, COALESCE(c.owner_id, 0), d.day, {base.sums('d')}
        FROM ({rows_sql}) d LEFT JOIN contacts_contact c ON c.id = d.contact_id
        GROUP BY d.run_id, COALESCE(c.owner_id, 0), d.day
        ORDER BY 1, 2, 3
        {TALLY_CONFLICT};
    """


def _pg_changed(o: str, n: str) -> str:
    old = ", ".join(t.format(r=o) for t in TRACKED)
    new = ", ".join(t.format(r=n) for t in TRACKED)
    return f"ROW({old}) IS DISTINCT FROM ROW({new})"


def _rows(alias: str, table: str, sign: int) -> str:
    return (
        f"SELECT {alias}.run_id, {alias}.contact_id, {day_of(alias, PG)} AS day, "
        f"{base.flags(alias, sign)} FROM {table}"
    )


PG_UPDATE_SET_BASED = _pg_tally_from(
    f"""
    {_rows('n', 'new_rows n JOIN old_rows o ON o.id = n.id', 1)} WHERE {_pg_changed('o', 'n')}
    UNION ALL
    {_rows('o', 'new_rows n JOIN old_rows o ON o.id = n.id', -1)} WHERE {_pg_changed('o', 'n')}
    """
)

PG_UPDATE = f"""
CREATE OR REPLACE FUNCTION campaigns_tally_recipient_update() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
    new_row campaigns_recipient%ROWTYPE;
    old_row campaigns_recipient%ROWTYPE;
    owner_k integer;
BEGIN
    IF (SELECT count(*) FROM new_rows) = 1 THEN
        SELECT * INTO new_row FROM new_rows;
        SELECT * INTO old_row FROM old_rows;
        IF NOT ({_pg_changed('old_row', 'new_row')}) THEN
            RETURN NULL;
        END IF;
        IF new_row.run_id = old_row.run_id AND new_row.contact_id = old_row.contact_id THEN
            owner_k := COALESCE((SELECT owner_id FROM contacts_contact
                               WHERE id = new_row.contact_id), 0);
            IF new_row.first_sent_on IS NOT DISTINCT FROM old_row.first_sent_on THEN
                {TALLY_INSERT}
                VALUES (new_row.run_id, owner_k, {day_of('new_row', PG)},
                        {one_row._diffs('old_row', 'new_row')})
                {TALLY_CONFLICT};
            ELSE
                -- Its first outcome: from the row of its old day to the row of its new one.
                {TALLY_INSERT}
                SELECT * FROM (VALUES
                    (old_row.run_id, owner_k, {day_of('old_row', PG)},
                     {flag_values('old_row', -1)}),
                    (new_row.run_id, owner_k, {day_of('new_row', PG)},
                     {flag_values('new_row')})
                ) v ORDER BY 3
                {TALLY_CONFLICT};
            END IF;
            RETURN NULL;
        END IF;
    END IF;
    {PG_UPDATE_SET_BASED}
    RETURN NULL;
END
$body$;
"""

PG_FORWARD = [
    base._pg_function(
        "campaigns_tally_recipient_insert", _pg_tally_from(_rows("r", "new_rows r", 1))
    ),
    base._pg_function(
        "campaigns_tally_recipient_delete",
        # A run being deleted takes its counters with it (campaigns_tally_run_delete).
        _pg_tally_from(
            f"{_rows('r', 'old_rows r', -1)} WHERE EXISTS "
            "(SELECT 1 FROM campaigns_campaignrun cr WHERE cr.id = r.run_id)"
        ),
    ),
    PG_UPDATE,
    # A contact changing owner: its recipients move between the owners' counter rows.
    base._pg_function(
        "campaigns_tally_contact_owner",
        f"""
        {TALLY_INSERT}
        SELECT r.run_id, COALESCE(OLD.owner_id, 0), r.day, {base.sums('r')}
        FROM ({_rows('x', 'campaigns_recipient x', -1)} WHERE x.contact_id = OLD.id) r
        GROUP BY r.run_id, r.day ORDER BY 1, 3
        {TALLY_CONFLICT};
        {TALLY_INSERT}
        SELECT r.run_id, COALESCE(NEW.owner_id, 0), r.day, {base.sums('r')}
        FROM ({_rows('x', 'campaigns_recipient x', 1)} WHERE x.contact_id = NEW.id) r
        GROUP BY r.run_id, r.day ORDER BY 1, 3
        {TALLY_CONFLICT};
        """,
    ),
    *(sql for sql in base.PG_FORWARD if "CREATE TRIGGER campaigns_tally_recipient" in sql),
    *(sql for sql in base.PG_FORWARD if "CREATE TRIGGER campaigns_tally_contact_owner" in sql),
]
# The triggers whose functions change; the functions are replaced (CREATE OR REPLACE).
PG_TALLY_TRIGGERS = [
    ("campaigns_tally_recipient_insert", "campaigns_recipient"),
    ("campaigns_tally_recipient_delete", "campaigns_recipient"),
    ("campaigns_tally_recipient_update", "campaigns_recipient"),
    ("campaigns_tally_contact_owner", "contacts_contact"),
]
PG_OLD = [
    *(
        sql
        for sql in base.PG_FORWARD
        if any(f"CREATE OR REPLACE FUNCTION {name}()" in sql for name, _ in PG_TALLY_TRIGGERS)
    ),
    one_row.FORWARD,
]

# --- SQLite --------------------------------------------------------------------------------

SQLITE = "sqlite"


def _sqlite_tally(row: str, sign: int) -> str:
    return f"""
        {TALLY_INSERT}
        SELECT {row}.run_id, {base._sqlite_owner(row)}, {day_of(row, SQLITE)},
               {base.flags(row, sign)}
        WHERE EXISTS (SELECT 1 FROM campaigns_campaignrun WHERE id = {row}.run_id)
        {TALLY_CONFLICT};
    """


def _sqlite_changed() -> str:
    return " OR ".join(f"({t.format(r='OLD')}) IS NOT ({t.format(r='NEW')})" for t in TRACKED)


SQLITE_TRIGGERS = [
    "campaigns_tally_recipient_insert",
    "campaigns_tally_recipient_delete",
    "campaigns_tally_recipient_update",
    "campaigns_tally_contact_owner",
    "campaigns_tally_run_delete",
]
SQLITE_FORWARD = [
    f"""
    CREATE TRIGGER campaigns_tally_recipient_insert AFTER INSERT ON campaigns_recipient
    BEGIN {_sqlite_tally('NEW', 1)} END;
    """,
    f"""
    CREATE TRIGGER campaigns_tally_recipient_delete AFTER DELETE ON campaigns_recipient
    BEGIN {_sqlite_tally('OLD', -1)} END;
    """,
    f"""
    CREATE TRIGGER campaigns_tally_recipient_update AFTER UPDATE ON campaigns_recipient
    WHEN {_sqlite_changed()}
    BEGIN {_sqlite_tally('OLD', -1)} {_sqlite_tally('NEW', 1)} END;
    """,
    f"""
    CREATE TRIGGER campaigns_tally_contact_owner AFTER UPDATE OF owner_id ON contacts_contact
    WHEN OLD.owner_id IS NOT NEW.owner_id
    BEGIN
        {TALLY_INSERT}
        SELECT r.run_id, COALESCE(OLD.owner_id, 0), r.day, {base.sums('r')}
        FROM (SELECT run_id, {day_of('x', SQLITE)} AS day, {base.flags('x', -1)}
              FROM campaigns_recipient x WHERE x.contact_id = OLD.id) r
        WHERE 1 GROUP BY r.run_id, r.day
        {TALLY_CONFLICT};
        {TALLY_INSERT}
        SELECT r.run_id, COALESCE(NEW.owner_id, 0), r.day, {base.sums('r')}
        FROM (SELECT run_id, {day_of('x', SQLITE)} AS day, {base.flags('x')}
              FROM campaigns_recipient x WHERE x.contact_id = NEW.id) r
        WHERE 1 GROUP BY r.run_id, r.day
        {TALLY_CONFLICT};
    END;
    """,
    *(sql for sql in base.SQLITE_FORWARD if "TRIGGER campaigns_tally_run_delete" in sql),
]
SQLITE_OLD = [
    sql
    for sql in base.SQLITE_FORWARD
    if any(f"TRIGGER {name} " in sql for name in SQLITE_TRIGGERS)
]


# --- steps -----------------------------------------------------------------------------------


def _run(schema_editor, statements: list[str]) -> None:
    for sql in statements:
        schema_editor.execute(sql, params=None)


def _lock(schema_editor) -> None:
    if schema_editor.connection.vendor == PG:
        # No write may slip between the rebuild of the counters and their triggers.
        schema_editor.execute(
            "LOCK TABLE campaigns_recipient, contacts_contact, tracking_rejection, "
            "campaigns_runtally IN SHARE ROW EXCLUSIVE MODE",
            params=None,
        )


def drop_old_triggers(apps, schema_editor) -> None:
    _lock(schema_editor)
    if schema_editor.connection.vendor == PG:
        _run(schema_editor, [f"DROP TRIGGER {n} ON {t};" for n, t in PG_TALLY_TRIGGERS])
    else:
        _run(schema_editor, [f"DROP TRIGGER IF EXISTS {n};" for n in SQLITE_TRIGGERS])


def restore_old_triggers(apps, schema_editor) -> None:
    """Backward: the counters per (run, owner) from the rows, then 0007/0008's triggers."""
    _lock(schema_editor)
    _run(schema_editor, ["DELETE FROM campaigns_runtally", base.BACKFILL[1]])
    if schema_editor.connection.vendor == PG:
        creates = [
            sql
            for sql in base.PG_FORWARD
            if any(f"CREATE TRIGGER {n} " in sql for n, _ in PG_TALLY_TRIGGERS)
        ]
        _run(schema_editor, [*PG_OLD, *creates])
    else:
        _run(schema_editor, SQLITE_OLD)


def first_sent_backfill(apps, schema_editor) -> None:
    """Each emailed recipient's day: that of its earliest email (sent, else tried), in the
    admin's time zone."""
    from django.db.models import Min, OuterRef, Q, Subquery
    from django.db.models.functions import Coalesce, TruncDate

    Message = apps.get_model("campaigns", "Message")
    Recipient = apps.get_model("campaigns", "Recipient")
    zone = zoneinfo.ZoneInfo(settings.TIME_ZONE)
    earliest = (
        Message.objects.filter(recipient=OuterRef("pk"))
        .filter(Q(sent_at__isnull=False) | Q(claimed_at__isnull=False))
        .order_by()
        .values("recipient")
        .annotate(at=Min(Coalesce("sent_at", "claimed_at")))
        .values("at")
    )
    Recipient.objects.using(schema_editor.connection.alias).filter(
        Q(steps_sent__gt=0) | ~Q(rejections=0)
    ).update(first_sent_on=TruncDate(Subquery(earliest), tzinfo=zone))


def forward(apps, schema_editor) -> None:
    first_sent_backfill(apps, schema_editor)
    vendor = schema_editor.connection.vendor
    _lock(schema_editor)
    statements = ["DELETE FROM campaigns_runtally", tally_backfill(vendor)]
    if vendor == PG:
        statements += PG_FORWARD
    elif vendor == SQLITE:
        statements += SQLITE_FORWARD
    else:  # pragma: no cover - LeadCenter runs on PostgreSQL or SQLite (DESIGN.md "Stack")
        raise NotImplementedError(f"report counters have no triggers for {vendor}")
    _run(schema_editor, statements)


def backward(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == PG:
        _run(schema_editor, [f"DROP TRIGGER {n} ON {t};" for n, t in PG_TALLY_TRIGGERS])
    else:
        _run(schema_editor, [f"DROP TRIGGER IF EXISTS {n};" for n in SQLITE_TRIGGERS])
    # Emptied so that the unique key (run, owner) can come back; restore_old_triggers
    # rebuilds them.
    schema_editor.execute("DELETE FROM campaigns_runtally", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0012_message_owner"),
        ("contacts", "0001_initial"),
        ("tracking", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(drop_old_triggers, restore_old_triggers),
        migrations.AddField(
            model_name="recipient",
            name="first_sent_on",
            field=models.DateField(
                blank=True,
                editable=False,
                help_text="The day its first email was sent or refused (admin time zone).",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="runtally",
            name="day",
            field=models.DateField(
                default=NO_DAY,
                help_text="The recipients' first_sent_on; 0001-01-01 for those not emailed yet.",
            ),
        ),
        migrations.RemoveConstraint(model_name="runtally", name="runtally_run_owner"),
        migrations.AddConstraint(
            model_name="runtally",
            constraint=models.UniqueConstraint(
                fields=("run", "owner_key", "day"), name="runtally_run_owner_day"
            ),
        ),
        migrations.RunPython(forward, backward),
    ]
