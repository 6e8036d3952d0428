"""The recipient-update counter trigger finds the owners of a small statement's rows by index.

The set-based path of the trigger (migration 0013) joins the changed rows to contacts_contact
for each contact's owner. For the sender's statement (the 50 recipients of a batch), PostgreSQL
hash-joins them to a full scan of the contacts table: EXPLAIN ANALYZE with 10,000 contacts shows
the scan of all 10,000 for 100 rows in, and the trigger cost 3.2-3.5 ms of a 5.5-5.8 ms
update of 50 recipients, the join 2.2 ms of it. With the owners looked up by primary key, one
row at a time, the trigger costs 1.3 ms.

Statements of up to SMALL rows now look the owners up that way (a LATERAL subquery that the
planner cannot flatten into the join, OFFSET 0); larger ones (a bulk update) keep the hash join,
which is the right plan for them. PostgreSQL only: SQLite's triggers are row-level and already
read one contact by id. Reversing restores 0013's function.
"""

from __future__ import annotations

import importlib

from django.db import migrations

previous = importlib.import_module("campaigns.migrations.0013_tally_by_first_sent_day")

SMALL = 1000
JOIN = "LEFT JOIN contacts_contact c ON c.id = d.contact_id"
BY_ID = (
    "LEFT JOIN LATERAL (SELECT cc.owner_id FROM contacts_contact cc "
    "WHERE cc.id = d.contact_id OFFSET 0) c ON true"
)


def _replaced(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"expected {old!r} once in migration 0013's function")
    return text.replace(old, new)


SET_BASED = previous.PG_UPDATE_SET_BASED
FORWARD = _replaced(
    previous.PG_UPDATE, "    owner_k integer;\n", "    owner_k integer;\n    n bigint;\n"
)
FORWARD = _replaced(
    FORWARD,
    "IF (SELECT count(*) FROM new_rows) = 1 THEN",
    "n := (SELECT count(*) FROM new_rows);\n    IF n = 1 THEN",
)
FORWARD = _replaced(
    FORWARD,
    SET_BASED,
    f"IF n <= {SMALL} THEN\n{_replaced(SET_BASED, JOIN, BY_ID)}\n"
    f"    ELSE\n{SET_BASED}\n    END IF;",
)


def forward(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(previous.PG_UPDATE, params=None)


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0014_account_usage")]

    operations = [migrations.RunPython(forward, backward)]
