"""The recipient-update counter trigger takes a short path for one-row statements.

The sender, the state machine and follow-ups update one recipient per statement. For those, the
set-based body of 0007 (join the transition tables, UNION ALL, GROUP BY, join the contacts)
costs more than the update itself. Now a one-row statement compares the old and new record and,
when something counted changed, upserts the per-counter difference (-1, 0 or 1) into the
owner's counter row; statements of several rows, or a recipient moving to another run or
contact, keep the set-based body. PostgreSQL only: SQLite's triggers are row-level already.

Reversing restores 0007's function.
"""

from __future__ import annotations

import importlib

from django.db import migrations

base = importlib.import_module("campaigns.migrations.0007_report_triggers")

FUNCTION = "campaigns_tally_recipient_update"


def _diffs(o: str, n: str) -> str:
    """Per counter, what one recipient's change from `o` to `n` adds (-1, 0 or 1)."""
    return ", ".join(
        f"(CASE WHEN {cond.format(r=n)} THEN 1 ELSE 0 END)"
        f" - (CASE WHEN {cond.format(r=o)} THEN 1 ELSE 0 END)"
        for _name, cond in base.COLUMNS
    )


SET_BASED = base._pg_tally_from(
    f"""
    SELECT n.run_id, n.contact_id, {base.flags('n')}
    FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE {base._changed('o', 'n')}
    UNION ALL
    SELECT o.run_id, o.contact_id, {base.flags('o', -1)}
    FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE {base._changed('o', 'n')}
    """
)

ONE_ROW = f"""
    IF (SELECT count(*) FROM new_rows) = 1 THEN
        SELECT * INTO new_row FROM new_rows;
        SELECT * INTO old_row FROM old_rows;
        IF NOT ({base._changed('old_row', 'new_row')}) THEN
            RETURN NULL;
        END IF;
        IF new_row.run_id = old_row.run_id AND new_row.contact_id = old_row.contact_id THEN
            {base.TALLY_INSERT}
            VALUES (new_row.run_id,
                    COALESCE((SELECT owner_id FROM contacts_contact
                              WHERE id = new_row.contact_id), 0),
                    {_diffs('old_row', 'new_row')})
            {base.TALLY_CONFLICT};
            RETURN NULL;
        END IF;
    END IF;
"""

FORWARD = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    new_row campaigns_recipient%ROWTYPE;
    old_row campaigns_recipient%ROWTYPE;
BEGIN
    {ONE_ROW}
    {SET_BASED}
    RETURN NULL;
END
$body$;
"""

BACKWARD = base._pg_function(FUNCTION, SET_BASED)


def forward(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0007_report_triggers")]

    operations = [migrations.RunPython(forward, backward)]
