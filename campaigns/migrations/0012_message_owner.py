"""Message.owner: the record owner of the email's contact, kept on the email, with indexes for
the Sent emails list filtered by owner together with a status or a rejection flag.

Why: the list's owner filter went through the recipient to the contact
(recipient__contact__owner). Alone it is broad enough for the list's order to find a page
quickly, but with a second broad filter (status bounced and one owner) the capped count had no
index holding both and PostgreSQL hash-joined every recipient to reach the owner: 4.4-6.3x the
10,000-email page at 1,000,000 emails. With the owner on the email, the filter is a test of the
email's own column, and

- message_owner_status (owner_id, status, created DESC, id DESC) lists the emails of one owner
  in one status in the list's order: a page and the capped count read the entries they need;
- msg_rej_owner_<flag> (owner_id, created DESC, id DESC) WHERE <flag>, one per rejection
  kind and category as message_rej_<flag> of migration 0011: the same for an owner and a
  rejection filter. They hold the rejected emails only (an email is inserted with no flag, so
  inserting and sending add no entry to them).

No foreign key constraint (db_constraint=False, on_delete DO_NOTHING): the column is a copy of
contacts_contact.owner_id, and the contact is where the constraint and SET_NULL live. Deleting a
user sets its contacts' owner to NULL (Django's collector, an UPDATE of contacts_contact), which
the trigger below copies onto their emails; a constraint here would make the collector also
visit every email of the user (a million-row UPDATE it would plan itself) for the same result,
and would order that UPDATE against the trigger's.

Kept by the database where it changes: the contact's owner (contacts_contact, UPDATE OF owner_id)
and, for completeness, a recipient moved to another contact (campaigns_recipient, UPDATE OF
contact_id; nothing in LeadCenter does that). An email never moves to another recipient, so there
is no trigger on campaigns_message, whose rows the sender updates twice per email. The writers
that create emails set it: run preparation's INSERT ... SELECT and follow_ups_queue
(campaigns.services), with the contact's owner.

The column is added with plain ALTER TABLE on both databases (see 0011: Django's AddField may
rebuild the table on SQLite, which drops the triggers of 0007 and 0011 on campaigns_message).
The backfill runs before the indexes are built. Reversible: the triggers and the column go.
"""

from __future__ import annotations

from django.conf import settings
from django.db import migrations, models
from django.db.models import F, Q
from django.db.models.lookups import GreaterThan

FLAGS = {
    "hard": 64,
    "soft": 128,
    "user_not_found": 1,
    "domain_not_found": 2,
    "mailbox_full": 4,
    "no_answer": 8,
    "spam_blocked": 16,
    "unspecified": 32,
}

ADD_COLUMN = "ALTER TABLE campaigns_message ADD COLUMN owner_id integer NULL"
DROP_COLUMN = "ALTER TABLE campaigns_message DROP COLUMN owner_id"

SET_FROM_CONTACT = """
    UPDATE campaigns_message SET owner_id = {owner}
    WHERE recipient_id IN (SELECT id FROM campaigns_recipient WHERE contact_id = {contact})
"""

PG_BACKFILL = """
    UPDATE campaigns_message m SET owner_id = c.owner_id
    FROM campaigns_recipient r JOIN contacts_contact c ON c.id = r.contact_id
    WHERE r.id = m.recipient_id AND c.owner_id IS NOT NULL
"""
SQLITE_BACKFILL = """
    UPDATE campaigns_message SET owner_id = (
        SELECT c.owner_id FROM campaigns_recipient r JOIN contacts_contact c ON c.id = r.contact_id
        WHERE r.id = campaigns_message.recipient_id
    )
"""


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
    _pg_function(
        "campaigns_message_owner_contact",
        SET_FROM_CONTACT.format(owner="NEW.owner_id", contact="NEW.id")
        + " AND owner_id IS DISTINCT FROM NEW.owner_id;",
    ),
    _pg_function(
        "campaigns_message_owner_recipient",
        """
        UPDATE campaigns_message SET owner_id =
            (SELECT owner_id FROM contacts_contact WHERE id = NEW.contact_id)
        WHERE recipient_id = NEW.id;
        """,
    ),
    """
    CREATE TRIGGER campaigns_message_owner_contact AFTER UPDATE OF owner_id ON contacts_contact
    FOR EACH ROW WHEN (OLD.owner_id IS DISTINCT FROM NEW.owner_id)
    EXECUTE FUNCTION campaigns_message_owner_contact();
    """,
    """
    CREATE TRIGGER campaigns_message_owner_recipient
    AFTER UPDATE OF contact_id ON campaigns_recipient
    FOR EACH ROW WHEN (OLD.contact_id IS DISTINCT FROM NEW.contact_id)
    EXECUTE FUNCTION campaigns_message_owner_recipient();
    """,
]
PG_BACKWARD = [
    "DROP TRIGGER IF EXISTS campaigns_message_owner_contact ON contacts_contact;",
    "DROP TRIGGER IF EXISTS campaigns_message_owner_recipient ON campaigns_recipient;",
    "DROP FUNCTION IF EXISTS campaigns_message_owner_contact();",
    "DROP FUNCTION IF EXISTS campaigns_message_owner_recipient();",
]

SQLITE_FORWARD = [
    f"""
    CREATE TRIGGER campaigns_message_owner_contact AFTER UPDATE OF owner_id ON contacts_contact
    WHEN OLD.owner_id IS NOT NEW.owner_id
    BEGIN {SET_FROM_CONTACT.format(owner="NEW.owner_id", contact="NEW.id")}; END;
    """,
    """
    CREATE TRIGGER campaigns_message_owner_recipient
    AFTER UPDATE OF contact_id ON campaigns_recipient
    WHEN OLD.contact_id IS NOT NEW.contact_id
    BEGIN
        UPDATE campaigns_message SET owner_id =
            (SELECT owner_id FROM contacts_contact WHERE id = NEW.contact_id)
        WHERE recipient_id = NEW.id;
    END;
    """,
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS campaigns_message_owner_contact;",
    "DROP TRIGGER IF EXISTS campaigns_message_owner_recipient;",
]


def add_column(apps, schema_editor) -> None:
    schema_editor.execute(ADD_COLUMN, params=None)


def drop_column(apps, schema_editor) -> None:
    schema_editor.execute(DROP_COLUMN, params=None)


def forward(apps, schema_editor) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        # No owner may change between the backfill and the triggers.
        schema_editor.execute(
            "LOCK TABLE contacts_contact, campaigns_recipient IN SHARE ROW EXCLUSIVE MODE",
            params=None,
        )
        statements = [PG_BACKFILL, *PG_FORWARD]
    elif vendor == "sqlite":
        statements = [SQLITE_BACKFILL, *SQLITE_FORWARD]
    else:  # pragma: no cover - LeadCenter runs on PostgreSQL or SQLite (DESIGN.md "Stack")
        raise NotImplementedError(f"the email's owner has no triggers for {vendor}")
    for sql in statements:
        schema_editor.execute(sql, params=None)


def backward(apps, schema_editor) -> None:
    vendor = schema_editor.connection.vendor
    for sql in PG_BACKWARD if vendor == "postgresql" else SQLITE_BACKWARD:
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0011_message_rejection_flags"),
        ("contacts", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(add_column, drop_column)],
            state_operations=[
                migrations.AddField(
                    model_name="message",
                    name="owner",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        editable=False,
                        help_text="The record owner of the email's contact (kept by a trigger).",
                        null=True,
                        on_delete=models.DO_NOTHING,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
        ),
        migrations.RunPython(forward, backward),
        # After the backfill, so it does not update them row by row.
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                fields=["owner", "status", "-created", "-id"], name="message_owner_status"
            ),
        ),
        *(
            migrations.AddIndex(
                model_name="message",
                index=models.Index(
                    fields=["owner", "-created", "-id"],
                    condition=Q(GreaterThan(F("rejection_flags").bitand(bit), 0)),
                    name=f"msg_rej_owner_{flag}",
                ),
            )
            for flag, bit in FLAGS.items()
        ),
    ]
