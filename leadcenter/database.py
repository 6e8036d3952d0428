"""Cursors for the statements the sender runs every batch.

Django's PostgreSQL backend binds parameters on the client (psycopg's ClientCursor): each
statement goes as text with its values in it, and PostgreSQL parses and plans it again every
time. The sender runs the same few statements for every batch of emails (the claim, the
batch read, the limits' count, the outcome's updates), each with the same text and its values
apart (a batch rides in one JSON or array parameter). Parsing and planning them cost as much
as running some of them (the batch read: 1.15 ms to plan, 1.0 ms to run, on the benchmark's
machine). `prepared_cursor()` gives those statements a server-side binding cursor that
prepares each one on its connection: parsed once, and planned once when PostgreSQL finds a
generic plan as good as a custom one (it decides, after five executions). Everything else keeps
Django's cursor. Off when the connection's prepare_threshold is None (Django's default, which
settings.py changes unless DATABASE_PREPARED_STATEMENTS=false).
"""

from __future__ import annotations

from contextlib import nullcontext

import psycopg
from django.db import connection as default_connection


class _Prepared(psycopg.Cursor):
    """psycopg's server-side binding cursor, every statement prepared."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def prepared_cursor(connection=None):
    """A cursor (Django's wrapper: the execute wrappers, debug logging and error translation
    apply) whose statements are prepared on the connection, on PostgreSQL; the usual cursor
    elsewhere. The statement text must not carry values (`%s` parameters only), or each batch
    prepares a new one."""
    connection = connection or default_connection
    if connection.vendor != "postgresql":
        return connection.cursor()
    connection.ensure_connection()
    if connection.connection.prepare_threshold is None:
        # Prepared statements are off (settings.DATABASE_PREPARED_STATEMENTS).
        return connection.cursor()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        cursor = _Prepared(connection.connection)
    if connection.queries_logged:
        return connection.make_debug_cursor(cursor)
    return connection.make_cursor(cursor)


def in_one_round_trip(connection, statements: list[tuple[str, list]]) -> list[tuple]:
    """PostgreSQL, outside a transaction: BEGIN, the statements and COMMIT sent together, in
    one round trip (psycopg's pipeline mode), each statement prepared as prepared_cursor()
    prepares it. The server still runs them one after the other: a statement that waits for
    a lock holds back the ones after it, and each takes its snapshot when it starts (READ
    COMMITTED), so it sees what was committed while the one before it waited. Returns the last
    statement's rows; errors are Django's, as its cursors raise them.

    With prepared statements off (settings.DATABASE_PREPARED_STATEMENTS, for a pooler that
    cannot keep them), or a libpq without pipeline mode (before 14), the same transaction goes
    one statement at a time, unprepared."""
    connection.ensure_connection()
    conn = connection.connection
    together = conn.prepare_threshold is not None and psycopg.Pipeline.is_supported()
    with connection.wrap_database_errors:
        with conn.pipeline() if together else nullcontext(), conn.transaction():
            cursors = []
            for sql, params in statements:
                cursor = _Prepared(conn) if together else psycopg.Cursor(conn)
                cursor.execute(sql, params)
                cursors.append(cursor)
        return cursors[-1].fetchall()


# SQL: the current transaction's commit does not wait for the disk (relax_commit()).
RELAXED_COMMIT = "set_config('synchronous_commit', 'off', true)"


def relax_commit(connection=None) -> None:
    """PostgreSQL: this transaction's commit does not wait for the disk. Only for outcomes: a
    database crash can lose the last fraction of a second of them, which leaves those messages
    in `sending` (in doubt, never resent). Claims stay fully durable: a lost claim would be a
    resend. A statement that is its own transaction says RELAXED_COMMIT itself."""
    connection = connection or default_connection
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {RELAXED_COMMIT}")
