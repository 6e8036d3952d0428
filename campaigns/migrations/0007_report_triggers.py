"""Database triggers that keep the report counters (RunTally, RunActivity, Recipient.rejections).

Why triggers: the run details and campaign summary pages must cost the same with a million
recipients as with ten thousand, so their figures are read from maintained counters, not
counted. The rows they count are written in many places (audience preparation, the sender, the
tracking state machine, follow-ups, imports changing a contact's owner, deletions), so the
counters are kept by the database itself, in the same transaction as each write: no writer can
forget them, and no code outside this migration knows about them.

- campaigns_recipient, INSERT/UPDATE/DELETE: each recipient adds 1 to the columns of
  RunTally(run, owner of its contact) whose condition it meets (COLUMNS below). PostgreSQL
  runs one statement-level trigger per statement (transition tables), so preparing a million
  recipients adds one GROUP BY, and counter rows are locked in (run, owner) order, so two
  statements cannot deadlock on them. SQLite has row-level triggers only (it has one writer).
- contacts_contact, UPDATE OF owner_id: the contact's recipients move to the new owner's row.
- tracking_rejection: sets the category's bit in Recipient.rejections (and recomputes it when a
  rejection is deleted or moved), which the recipient trigger then counts.
- tracking_trackingevent: opens and clicks per run, hour (UTC), type and is_machine.
- campaigns_message, DELETE: Django's deletion collector may delete an email before or after
  its events and rejections; whichever goes second finds the other gone, so the email's own
  trigger takes back its events' activity and its rejections' bits (and theirs then find
  nothing to do).
- campaigns_campaignrun, DELETE: drops the run's counters.
- PostgreSQL TRUNCATE (which fires no row or statement trigger): emptying the recipients,
  events or rejections empties or resets what was counted from them.

The SQL is frozen here on purpose: a later change of the counters is a new migration.
campaigns.reports defines the same conditions as Django Q objects (the live path and the admin
filters); the tests check that both agree.
"""

from __future__ import annotations

from django.db import migrations

REASONS = (
    "unsubscribed",
    "do_not_email",
    "do_not_mass_email",
    "no_email",
    "invalid_email",
    "blocked",
    "duplicate",
    "no_email_selected",
)
BITS = {
    "user_not_found": 1,
    "domain_not_found": 2,
    "mailbox_full": 4,
    "no_answer": 8,
    "spam_blocked": 16,
    "unspecified": 32,
}
HARD_MASK = 3
SOFT_MASK = 60
FIRST_SEEN = (
    ("delivered", "delivered_at"),
    ("opened", "opened_at"),
    ("clicked", "clicked_at"),
    ("replied", "replied_at"),
    ("unsubscribed", "unsubscribed_at"),
    ("complained", "complained_at"),
    ("bounced", "bounced_at"),
    ("leads", "lead_at"),
    ("opportunities", "opportunity_at"),
)

# Counter column -> the condition a recipient row `{r}` meets to be counted in it.
COLUMNS: list[tuple[str, str]] = [
    ("recipients", "1 = 1"),
    ("filtered", "{r}.status = 'filtered'"),
    *((f"filtered_{reason}", f"{{r}}.filter_reason = '{reason}'") for reason in REASONS),
    ("pending", "{r}.status = 'pending'"),
    ("partial", "{r}.status = 'partial'"),
    ("sent", "{r}.status = 'sent'"),
    ("failed", "{r}.status = 'failed'"),
    ("attempted", "({r}.steps_sent > 0 OR {r}.rejections <> 0)"),
    ("accepted", "{r}.steps_sent > 0"),
    *((column, f"{{r}}.{field} IS NOT NULL") for column, field in FIRST_SEEN),
    ("rejected", "{r}.rejections <> 0"),
    ("rejected_hard", f"({{r}}.rejections & {HARD_MASK}) <> 0"),
    ("rejected_soft", f"({{r}}.rejections & {SOFT_MASK}) <> 0"),
    *((f"rejected_{cat}", f"({{r}}.rejections & {bit}) <> 0") for cat, bit in BITS.items()),
]
NAMES = [name for name, _ in COLUMNS]
# What a recipient update must change to change any counter.
TRACKED = [
    "{r}.run_id",
    "{r}.contact_id",
    "{r}.status",
    "{r}.filter_reason",
    "{r}.steps_sent > 0",
    "{r}.rejections",
    *(f"{{r}}.{field} IS NULL" for _, field in FIRST_SEEN),
]


def flags(r: str, sign: int = 1) -> str:
    prefix = "-" if sign < 0 else ""
    return ", ".join(
        f"{prefix}(CASE WHEN {cond.format(r=r)} THEN 1 ELSE 0 END) AS {name}"
        for name, cond in COLUMNS
    )


def sums(alias: str) -> str:
    return ", ".join(f"SUM({alias}.{name})" for name in NAMES)


def upsert_set(table: str) -> str:
    return ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in NAMES)


def bit_of(expr: str) -> str:
    whens = " ".join(f"WHEN '{cat}' THEN {bit}" for cat, bit in BITS.items())
    return f"(CASE {expr} {whens} ELSE 0 END)"


TALLY_INSERT = f"INSERT INTO campaigns_runtally (run_id, owner_key, {', '.join(NAMES)})"
TALLY_CONFLICT = f"ON CONFLICT (run_id, owner_key) DO UPDATE SET {upsert_set('campaigns_runtally')}"
ACTIVITY_INSERT = "INSERT INTO campaigns_runactivity (run_id, hour, type, is_machine, count)"
ACTIVITY_CONFLICT = (
    "ON CONFLICT (run_id, hour, type, is_machine) DO UPDATE SET "
    "count = campaigns_runactivity.count + excluded.count"
)
ENGAGEMENT = "('opened', 'clicked')"
RECIPIENT_OF = "SELECT recipient_id FROM campaigns_message WHERE id = {row}.message_id"
# Recipients of deleted emails (old_rows) whose rejections are still there.
MESSAGE_GONE = (
    "id IN (SELECT o.recipient_id FROM old_rows o WHERE EXISTS "
    "(SELECT 1 FROM tracking_rejection rj WHERE rj.message_id = o.id))"
)


def recompute_mask(recipient_id_sql: str, *, where: str = "") -> str:
    """Recipient.rejections rebuilt from its rejections (distinct bits summed = OR)."""
    return f"""
        UPDATE campaigns_recipient SET rejections = COALESCE((
            SELECT SUM(DISTINCT {bit_of('rj.category')})
            FROM tracking_rejection rj JOIN campaigns_message m ON m.id = rj.message_id
            WHERE m.recipient_id = campaigns_recipient.id
        ), 0)
        WHERE {where or f"id = ({recipient_id_sql})"}
    """


# --- backfill (both databases) -------------------------------------------------------------

BACKFILL = [
    recompute_mask(
        "",
        where="id IN (SELECT m.recipient_id FROM tracking_rejection rj "
        "JOIN campaigns_message m ON m.id = rj.message_id)",
    ),
    f"""
    {TALLY_INSERT}
    SELECT d.run_id, d.owner_key, {sums('d')}
    FROM (
        SELECT r.run_id, COALESCE(c.owner_id, 0) AS owner_key, {flags('r')}
        FROM campaigns_recipient r LEFT JOIN contacts_contact c ON c.id = r.contact_id
    ) d
    GROUP BY d.run_id, d.owner_key
    """,
]


def activity_backfill(hour_sql: str) -> str:
    return f"""
    {ACTIVITY_INSERT}
    SELECT d.run_id, d.hour, d.type, d.is_machine, COUNT(*)
    FROM (
        SELECT m.run_id, {hour_sql.format(t='e.occurred_at')} AS hour, e.type, e.is_machine
        FROM tracking_trackingevent e JOIN campaigns_message m ON m.id = e.message_id
        WHERE e.type IN {ENGAGEMENT}
    ) d
    GROUP BY d.run_id, d.hour, d.type, d.is_machine
    """


# --- PostgreSQL ----------------------------------------------------------------------------

PG_HOUR = "(date_trunc('hour', {t} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"


def _pg_function(name: str, body: str) -> str:
    return f"""
    CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        {body}
        RETURN NULL;
    END
    $body$;
    """


def _pg_tally_from(rows_sql: str) -> str:
    """Upsert the sums of `rows_sql` (run_id, contact_id, flags...) per (run, owner), in key
    order so concurrent statements lock counter rows in the same order."""
    return f"""
        {TALLY_INSERT}
        SELECT d.run_id, COALESCE(c.owner_id, 0), {sums('d')}
        FROM ({rows_sql}) d LEFT JOIN contacts_contact c ON c.id = d.contact_id
        GROUP BY d.run_id, COALESCE(c.owner_id, 0)
        ORDER BY 1, 2
        {TALLY_CONFLICT};
    """


def _changed(o: str, n: str) -> str:
    old = ", ".join(t.format(r=o) for t in TRACKED)
    new = ", ".join(t.format(r=n) for t in TRACKED)
    return f"ROW({old}) IS DISTINCT FROM ROW({new})"


PG_FORWARD = [
    # Recipients: statement-level, with transition tables.
    _pg_function(
        "campaigns_tally_recipient_insert",
        _pg_tally_from(f"SELECT r.run_id, r.contact_id, {flags('r')} FROM new_rows r"),
    ),
    _pg_function(
        "campaigns_tally_recipient_delete",
        # A run being deleted takes its counters with it (campaigns_tally_run_delete).
        _pg_tally_from(
            f"SELECT r.run_id, r.contact_id, {flags('r', -1)} FROM old_rows r "
            "WHERE EXISTS (SELECT 1 FROM campaigns_campaignrun cr WHERE cr.id = r.run_id)"
        ),
    ),
    _pg_function(
        "campaigns_tally_recipient_update",
        _pg_tally_from(
            f"""
            SELECT n.run_id, n.contact_id, {flags('n')}
            FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE {_changed('o', 'n')}
            UNION ALL
            SELECT o.run_id, o.contact_id, {flags('o', -1)}
            FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE {_changed('o', 'n')}
            """
        ),
    ),
    """
    CREATE TRIGGER campaigns_tally_recipient_insert AFTER INSERT ON campaigns_recipient
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_tally_recipient_insert();
    """,
    """
    CREATE TRIGGER campaigns_tally_recipient_delete AFTER DELETE ON campaigns_recipient
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_tally_recipient_delete();
    """,
    """
    CREATE TRIGGER campaigns_tally_recipient_update AFTER UPDATE ON campaigns_recipient
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_tally_recipient_update();
    """,
    # A contact changing owner: its recipients move between the owners' counter rows.
    _pg_function(
        "campaigns_tally_contact_owner",
        f"""
        {TALLY_INSERT}
        SELECT r.run_id, COALESCE(OLD.owner_id, 0), {sums('r')}
        FROM (SELECT run_id, {flags('x', -1)} FROM campaigns_recipient x
              WHERE x.contact_id = OLD.id) r
        GROUP BY r.run_id ORDER BY 1
        {TALLY_CONFLICT};
        {TALLY_INSERT}
        SELECT r.run_id, COALESCE(NEW.owner_id, 0), {sums('r')}
        FROM (SELECT run_id, {flags('x')} FROM campaigns_recipient x
              WHERE x.contact_id = NEW.id) r
        GROUP BY r.run_id ORDER BY 1
        {TALLY_CONFLICT};
        """,
    ),
    """
    CREATE TRIGGER campaigns_tally_contact_owner AFTER UPDATE OF owner_id ON contacts_contact
    FOR EACH ROW WHEN (OLD.owner_id IS DISTINCT FROM NEW.owner_id)
    EXECUTE FUNCTION campaigns_tally_contact_owner();
    """,
    # Rejections: the recipient's category bits.
    _pg_function(
        "campaigns_rejection_bits_insert",
        f"""
        UPDATE campaigns_recipient SET rejections = rejections | {bit_of('NEW.category')}
        WHERE id = (SELECT recipient_id FROM campaigns_message WHERE id = NEW.message_id)
          AND {bit_of('NEW.category')} <> 0
          AND (rejections & {bit_of('NEW.category')}) = 0;
        """,
    ),
    _pg_function(
        "campaigns_rejection_bits_recompute",
        f"""
        IF TG_OP = 'UPDATE' THEN
            IF NEW.message_id IS NOT NULL THEN
                {recompute_mask(RECIPIENT_OF.format(row='NEW'))};
            END IF;
        END IF;
        IF OLD.message_id IS NOT NULL THEN
            {recompute_mask(RECIPIENT_OF.format(row='OLD'))};
        END IF;
        """,
    ),
    """
    CREATE TRIGGER campaigns_rejection_bits_insert AFTER INSERT ON tracking_rejection
    FOR EACH ROW WHEN (NEW.message_id IS NOT NULL)
    EXECUTE FUNCTION campaigns_rejection_bits_insert();
    """,
    """
    CREATE TRIGGER campaigns_rejection_bits_delete AFTER DELETE ON tracking_rejection
    FOR EACH ROW WHEN (OLD.message_id IS NOT NULL)
    EXECUTE FUNCTION campaigns_rejection_bits_recompute();
    """,
    """
    CREATE TRIGGER campaigns_rejection_bits_update
    AFTER UPDATE OF message_id, category ON tracking_rejection
    FOR EACH ROW WHEN ((OLD.message_id, OLD.category) IS DISTINCT FROM
                       (NEW.message_id, NEW.category))
    EXECUTE FUNCTION campaigns_rejection_bits_recompute();
    """,
    # Opens and clicks per run and hour.
    _pg_function(
        "campaigns_activity_event",
        f"""
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            IF OLD.message_id IS NOT NULL AND OLD.type IN {ENGAGEMENT} THEN
                {ACTIVITY_INSERT}
                SELECT m.run_id, {PG_HOUR.format(t='OLD.occurred_at')}, OLD.type,
                       OLD.is_machine, -1
                FROM campaigns_message m WHERE m.id = OLD.message_id
                {ACTIVITY_CONFLICT};
            END IF;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            IF NEW.message_id IS NOT NULL AND NEW.type IN {ENGAGEMENT} THEN
                {ACTIVITY_INSERT}
                SELECT m.run_id, {PG_HOUR.format(t='NEW.occurred_at')}, NEW.type,
                       NEW.is_machine, 1
                FROM campaigns_message m WHERE m.id = NEW.message_id
                {ACTIVITY_CONFLICT};
            END IF;
        END IF;
        """,
    ),
    f"""
    CREATE TRIGGER campaigns_activity_insert AFTER INSERT ON tracking_trackingevent
    FOR EACH ROW WHEN (NEW.message_id IS NOT NULL AND NEW.type IN {ENGAGEMENT})
    EXECUTE FUNCTION campaigns_activity_event();
    """,
    f"""
    CREATE TRIGGER campaigns_activity_delete AFTER DELETE ON tracking_trackingevent
    FOR EACH ROW WHEN (OLD.message_id IS NOT NULL AND OLD.type IN {ENGAGEMENT})
    EXECUTE FUNCTION campaigns_activity_event();
    """,
    """
    CREATE TRIGGER campaigns_activity_update
    AFTER UPDATE OF message_id, type, occurred_at, is_machine ON tracking_trackingevent
    FOR EACH ROW WHEN ((OLD.message_id, OLD.type, OLD.occurred_at, OLD.is_machine)
                       IS DISTINCT FROM (NEW.message_id, NEW.type, NEW.occurred_at,
                                         NEW.is_machine))
    EXECUTE FUNCTION campaigns_activity_event();
    """,
    _pg_function(
        "campaigns_message_delete",
        f"""
        {ACTIVITY_INSERT}
        SELECT d.run_id, d.hour, d.type, d.is_machine, -COUNT(*)
        FROM (
            SELECT o.run_id, {PG_HOUR.format(t='e.occurred_at')} AS hour, e.type, e.is_machine
            FROM old_rows o JOIN tracking_trackingevent e ON e.message_id = o.id
            WHERE e.type IN {ENGAGEMENT}
        ) d
        GROUP BY d.run_id, d.hour, d.type, d.is_machine
        ORDER BY 1, 2, 3, 4
        {ACTIVITY_CONFLICT};
        {recompute_mask("", where=MESSAGE_GONE)};
        """,
    ),
    """
    CREATE TRIGGER campaigns_message_delete AFTER DELETE ON campaigns_message
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_message_delete();
    """,
    _pg_function(
        "campaigns_tally_run_delete",
        """
        DELETE FROM campaigns_runtally WHERE run_id = OLD.id;
        DELETE FROM campaigns_runactivity WHERE run_id = OLD.id;
        """,
    ),
    """
    CREATE TRIGGER campaigns_tally_run_delete AFTER DELETE ON campaigns_campaignrun
    FOR EACH ROW EXECUTE FUNCTION campaigns_tally_run_delete();
    """,
    _pg_function("campaigns_tally_truncate", "DELETE FROM campaigns_runtally;"),
    _pg_function("campaigns_activity_truncate", "DELETE FROM campaigns_runactivity;"),
    _pg_function(
        "campaigns_rejection_bits_truncate",
        "UPDATE campaigns_recipient SET rejections = 0 WHERE rejections <> 0;",
    ),
    """
    CREATE TRIGGER campaigns_tally_truncate AFTER TRUNCATE ON campaigns_recipient
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_tally_truncate();
    """,
    """
    CREATE TRIGGER campaigns_activity_truncate AFTER TRUNCATE ON tracking_trackingevent
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_activity_truncate();
    """,
    """
    CREATE TRIGGER campaigns_rejection_bits_truncate AFTER TRUNCATE ON tracking_rejection
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_rejection_bits_truncate();
    """,
]

PG_TRIGGERS = [
    ("campaigns_tally_recipient_insert", "campaigns_recipient"),
    ("campaigns_tally_recipient_delete", "campaigns_recipient"),
    ("campaigns_tally_recipient_update", "campaigns_recipient"),
    ("campaigns_tally_contact_owner", "contacts_contact"),
    ("campaigns_rejection_bits_insert", "tracking_rejection"),
    ("campaigns_rejection_bits_delete", "tracking_rejection"),
    ("campaigns_rejection_bits_update", "tracking_rejection"),
    ("campaigns_activity_insert", "tracking_trackingevent"),
    ("campaigns_activity_delete", "tracking_trackingevent"),
    ("campaigns_activity_update", "tracking_trackingevent"),
    ("campaigns_message_delete", "campaigns_message"),
    ("campaigns_tally_run_delete", "campaigns_campaignrun"),
]
PG_TRUNCATE_TRIGGERS = [
    ("campaigns_tally_truncate", "campaigns_recipient"),
    ("campaigns_activity_truncate", "tracking_trackingevent"),
    ("campaigns_rejection_bits_truncate", "tracking_rejection"),
]
PG_FUNCTIONS = [
    "campaigns_tally_recipient_insert",
    "campaigns_tally_recipient_delete",
    "campaigns_tally_recipient_update",
    "campaigns_tally_contact_owner",
    "campaigns_rejection_bits_insert",
    "campaigns_rejection_bits_recompute",
    "campaigns_activity_event",
    "campaigns_message_delete",
    "campaigns_tally_run_delete",
    "campaigns_tally_truncate",
    "campaigns_activity_truncate",
    "campaigns_rejection_bits_truncate",
]
PG_BACKWARD = [
    *(
        f"DROP TRIGGER IF EXISTS {name} ON {table};"
        for name, table in [*PG_TRIGGERS, *PG_TRUNCATE_TRIGGERS]
    ),
    *(f"DROP FUNCTION IF EXISTS {name}();" for name in PG_FUNCTIONS),
]

# --- SQLite --------------------------------------------------------------------------------

SQLITE_HOUR = "strftime('%Y-%m-%d %H:00:00', {t})"


def _sqlite_owner(row: str) -> str:
    return f"COALESCE((SELECT owner_id FROM contacts_contact WHERE id = {row}.contact_id), 0)"


def _sqlite_tally(row: str, sign: int) -> str:
    return f"""
        {TALLY_INSERT}
        SELECT {row}.run_id, {_sqlite_owner(row)}, {flags(row, sign)}
        WHERE EXISTS (SELECT 1 FROM campaigns_campaignrun WHERE id = {row}.run_id)
        {TALLY_CONFLICT};
    """


def _sqlite_changed() -> str:
    return " OR ".join(f"({t.format(r='OLD')}) IS NOT ({t.format(r='NEW')})" for t in TRACKED)


def _sqlite_activity(row: str, sign: int) -> str:
    return f"""
        {ACTIVITY_INSERT}
        SELECT m.run_id, {SQLITE_HOUR.format(t=f'{row}.occurred_at')}, {row}.type,
               {row}.is_machine, {sign}
        FROM campaigns_message m
        WHERE m.id = {row}.message_id AND {row}.type IN {ENGAGEMENT}
        {ACTIVITY_CONFLICT};
    """


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
        SELECT r.run_id, COALESCE(OLD.owner_id, 0), {sums('r')}
        FROM (SELECT run_id, {flags('x', -1)} FROM campaigns_recipient x
              WHERE x.contact_id = OLD.id) r
        WHERE 1 GROUP BY r.run_id
        {TALLY_CONFLICT};
        {TALLY_INSERT}
        SELECT r.run_id, COALESCE(NEW.owner_id, 0), {sums('r')}
        FROM (SELECT run_id, {flags('x')} FROM campaigns_recipient x
              WHERE x.contact_id = NEW.id) r
        WHERE 1 GROUP BY r.run_id
        {TALLY_CONFLICT};
    END;
    """,
    f"""
    CREATE TRIGGER campaigns_rejection_bits_insert AFTER INSERT ON tracking_rejection
    WHEN NEW.message_id IS NOT NULL AND {bit_of('NEW.category')} <> 0
    BEGIN
        UPDATE campaigns_recipient SET rejections = rejections | {bit_of('NEW.category')}
        WHERE id = (SELECT recipient_id FROM campaigns_message WHERE id = NEW.message_id)
          AND (rejections & {bit_of('NEW.category')}) = 0;
    END;
    """,
    f"""
    CREATE TRIGGER campaigns_rejection_bits_delete AFTER DELETE ON tracking_rejection
    WHEN OLD.message_id IS NOT NULL
    BEGIN
        {recompute_mask(RECIPIENT_OF.format(row='OLD'))};
    END;
    """,
    f"""
    CREATE TRIGGER campaigns_rejection_bits_update
    AFTER UPDATE OF message_id, category ON tracking_rejection
    WHEN OLD.message_id IS NOT NEW.message_id OR OLD.category IS NOT NEW.category
    BEGIN
        {recompute_mask(RECIPIENT_OF.format(row='OLD'))};
        {recompute_mask(RECIPIENT_OF.format(row='NEW'))};
    END;
    """,
    f"""
    CREATE TRIGGER campaigns_activity_insert AFTER INSERT ON tracking_trackingevent
    WHEN NEW.message_id IS NOT NULL AND NEW.type IN {ENGAGEMENT}
    BEGIN {_sqlite_activity('NEW', 1)} END;
    """,
    f"""
    CREATE TRIGGER campaigns_activity_delete AFTER DELETE ON tracking_trackingevent
    WHEN OLD.message_id IS NOT NULL AND OLD.type IN {ENGAGEMENT}
    BEGIN {_sqlite_activity('OLD', -1)} END;
    """,
    f"""
    CREATE TRIGGER campaigns_activity_update
    AFTER UPDATE OF message_id, type, occurred_at, is_machine ON tracking_trackingevent
    WHEN OLD.message_id IS NOT NEW.message_id OR OLD.type IS NOT NEW.type
      OR OLD.occurred_at IS NOT NEW.occurred_at OR OLD.is_machine IS NOT NEW.is_machine
    BEGIN {_sqlite_activity('OLD', -1)} {_sqlite_activity('NEW', 1)} END;
    """,
    f"""
    CREATE TRIGGER campaigns_message_delete AFTER DELETE ON campaigns_message
    BEGIN
        {ACTIVITY_INSERT}
        SELECT OLD.run_id, {SQLITE_HOUR.format(t='e.occurred_at')}, e.type, e.is_machine,
               -COUNT(*)
        FROM tracking_trackingevent e
        WHERE e.message_id = OLD.id AND e.type IN {ENGAGEMENT}
        GROUP BY {SQLITE_HOUR.format(t='e.occurred_at')}, e.type, e.is_machine
        {ACTIVITY_CONFLICT};
        {recompute_mask(
            "",
            where="id = OLD.recipient_id AND EXISTS "
            "(SELECT 1 FROM tracking_rejection WHERE message_id = OLD.id)",
        )};
    END;
    """,
    """
    CREATE TRIGGER campaigns_tally_run_delete AFTER DELETE ON campaigns_campaignrun
    BEGIN
        DELETE FROM campaigns_runtally WHERE run_id = OLD.id;
        DELETE FROM campaigns_runactivity WHERE run_id = OLD.id;
    END;
    """,
]
SQLITE_BACKWARD = [f"DROP TRIGGER IF EXISTS {name};" for name, _ in PG_TRIGGERS]


def forward(apps, schema_editor) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        # No write may slip between the backfill and the triggers.
        schema_editor.execute(
            "LOCK TABLE campaigns_recipient, contacts_contact, tracking_rejection, "
            "tracking_trackingevent, campaigns_campaignrun IN SHARE ROW EXCLUSIVE MODE"
        )
        statements = [*BACKFILL, activity_backfill(PG_HOUR), *PG_FORWARD]
    elif vendor == "sqlite":
        statements = [*BACKFILL, activity_backfill(SQLITE_HOUR), *SQLITE_FORWARD]
    else:  # pragma: no cover - LeadCenter runs on PostgreSQL or SQLite (DESIGN.md "Stack")
        raise NotImplementedError(f"report counters have no triggers for {vendor}")
    for sql in statements:
        schema_editor.execute(sql, params=None)


def backward(apps, schema_editor) -> None:
    vendor = schema_editor.connection.vendor
    statements = PG_BACKWARD if vendor == "postgresql" else SQLITE_BACKWARD
    for sql in statements:
        schema_editor.execute(sql, params=None)
    schema_editor.execute("DELETE FROM campaigns_runtally", params=None)
    schema_editor.execute("DELETE FROM campaigns_runactivity", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0006_report_tallies_and_exports"),
        ("contacts", "0001_initial"),
        ("tracking", "0001_initial"),
    ]

    operations = [migrations.RunPython(forward, backward)]
