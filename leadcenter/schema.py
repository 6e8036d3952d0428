"""Helpers for migrations that drop an index Django would only drop through AlterField.

AlterField rebuilds the table on SQLite, which drops the report triggers of
campaigns/migrations/0007 with it, and on PostgreSQL drops and re-validates the foreign keys.
These find the indexes by introspection and drop, create or rename them by name instead; the
migration declares the model change in `SeparateDatabaseAndState`'s state operations.
"""

from __future__ import annotations


def single_column_indexes(schema_editor, table: str, column: str, *, unique: bool) -> list[str]:
    """Names of the table's indexes on exactly `column` (unique ones, or plain ones)."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return [
        name
        for name, info in constraints.items()
        if info["columns"] == [column]
        and not info["primary_key"]
        and (info["unique"] if unique else info["index"] and not info["unique"])
    ]


def indexes_drop(schema_editor, table: str, column: str) -> None:
    """Drop the plain (non-unique) indexes on exactly `column`; on PostgreSQL that includes
    the varchar_pattern_ops twin Django adds to an indexed or unique CharField."""
    for name in single_column_indexes(schema_editor, table, column, unique=False):
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}", params=None)


def index_create(schema_editor, table: str, column: str, *, like: bool = False) -> None:
    """The index Django creates for a foreign key or an indexed column, named as Django
    names it; `like`: its varchar_pattern_ops twin (PostgreSQL only)."""
    quote = schema_editor.quote_name
    if like:
        if schema_editor.connection.vendor != "postgresql":
            return
        name = schema_editor._create_index_name(table, [column], suffix="_like")
        columns = f"{quote(column)} varchar_pattern_ops"
    else:
        name = schema_editor._create_index_name(table, [column], suffix="")
        columns = quote(column)
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} ({columns})", params=None
    )


def unique_rename(schema_editor, table: str, column: str, name: str) -> None:
    """PostgreSQL: give the unique constraint on `column` the name `name` (what Meta.constraints
    declares). On SQLite a unique column is part of the table definition and stays as it is."""
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for current in single_column_indexes(schema_editor, table, column, unique=True):
        if current != name:
            schema_editor.execute(
                f"ALTER TABLE {quote(table)} RENAME CONSTRAINT {quote(current)} TO {quote(name)}",
                params=None,
            )
