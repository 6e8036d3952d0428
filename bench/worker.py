"""Helper processes of the send benchmark (bench.send_throughput), one per sender.

    python -m bench.worker raw --messages FILE --index K --of N --port P
    python -m bench.worker pipeline [--profile FILE]

Each does its set-up (imports, loading the pre-built messages, the database connection), prints
`ready`, waits for a `go` line on stdin, does its work, and prints one JSON line with its own
start and end times (time.time()), so the parent times every sender from the same start line and
leaves process start-up out of both sides.

- `raw`: one smtplib.SMTP connection; MAIL, RCPT and DATA for every K-th pre-built message.
- `pipeline`: `campaigns.services.dispatch_due()` in a loop until a pass claims nothing, which is
  what `manage.py send_due --until-idle` does. It also measures where the time goes: database
  round trips (through a connection execute wrapper), composing, and the SMTP conversation.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import smtplib
import sys
import time
from collections.abc import Callable
from typing import Any


def _wait_for_go() -> None:
    print("ready", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")


def run_raw(messages_file: str, index: int, of: int, port: int) -> dict[str, Any]:
    with open(messages_file, "rb") as fh:
        messages: list[tuple[str, str, bytes]] = pickle.load(fh)[index::of]  # noqa: S301
    _wait_for_go()
    start = time.time()
    cpu = time.process_time()
    refused = 0
    connection = smtplib.SMTP("127.0.0.1", port, timeout=60)
    connection.ehlo()
    for envelope_from, recipient, data in messages:
        code, _ = connection.mail(envelope_from)
        if code != 250:
            refused += 1
            connection.rset()
            continue
        code, _ = connection.rcpt(recipient)
        if code not in (250, 251):
            refused += 1
            connection.rset()
            continue
        code, _ = connection.data(data)
        refused += code != 250
    connection.quit()
    end = time.time()
    return {
        "start": start,
        "end": end,
        "cpu_seconds": time.process_time() - cpu,
        "sent": len(messages) - refused,
        "refused": refused,
    }


class _Meter:
    """Wall time and calls spent inside the wrapped functions; a call made from inside
    another one counts in the outer call only (submit() calls flush())."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return func(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
                self._depth -= 1

        return timed


def run_pipeline(profile: str | None) -> dict[str, Any]:
    from bench.common import bench_environ, process_cpu_seconds

    bench_environ()
    import django

    django.setup()
    from django.db import connection

    from campaigns import services, smtp

    # Where the time goes, measured from outside the code under test.
    db, commit, compose = _Meter(), _Meter(), _Meter()
    smtp_io, smtp_connect = _Meter(), _Meter()
    statements: dict[str, int] = {}
    detail: dict[str, float] = {}

    def db_wrapper(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        verb = sql.lstrip().split(None, 1)[0].upper() if sql else "?"
        statements[verb] = statements.get(verb, 0) + 1
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            took = time.perf_counter() - started
            db.seconds += took
            db.calls += 1
            if os.environ.get("BENCH_SQL_DETAIL"):
                key = " ".join(sql.split())[:70]
                detail[key] = detail.get(key, 0.0) + took

    services.compose = compose.wrap(services.compose)  # type: ignore[attr-defined]
    # The claim's transaction goes in one round trip on the connection itself, past the
    # execute wrappers: timed and counted here as one statement.
    from tracking import services as tracking_services

    in_one_round_trip = tracking_services.in_one_round_trip

    def pipelined(connection, sent):  # type: ignore[no-untyped-def]
        statements["PIPELINE"] = statements.get("PIPELINE", 0) + 1
        started = time.perf_counter()
        try:
            return in_one_round_trip(connection, sent)
        finally:
            db.seconds += time.perf_counter() - started
            db.calls += 1

    tracking_services.in_one_round_trip = pipelined  # type: ignore[assignment]
    # The sender streams a batch: submit() sends one message and reads the previous one's
    # reply, flush() reads the last.
    smtp.SmtpSession.submit = smtp_io.wrap(smtp.SmtpSession.submit)  # type: ignore[method-assign]
    smtp.SmtpSession.flush = smtp_io.wrap(smtp.SmtpSession.flush)  # type: ignore[method-assign]
    smtp.SmtpSession.open = smtp_connect.wrap(smtp.SmtpSession.open)  # type: ignore[method-assign]
    smtp.SmtpSession.close = smtp_connect.wrap(smtp.SmtpSession.close)  # type: ignore[method-assign]
    connection.ensure_connection()
    # atomic() commits through this method; COMMIT is not an execute(), so time it apart.
    connection.commit = commit.wrap(connection.commit)  # type: ignore[method-assign]

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = cursor.fetchone()[0]
    profiler = None
    if profile:
        import cProfile

        # CPU time, not wall time: waits (database, SMTP, other processes) cost no CPU.
        profiler = cProfile.Profile(time.process_time)
    _wait_for_go()
    totals = services.DispatchReport()
    passes = 0
    start = time.time()
    cpu = time.process_time()
    backend_cpu = process_cpu_seconds(backend_pid)
    with connection.execute_wrapper(db_wrapper):
        if profiler:
            profiler.enable()
        while True:
            report = services.dispatch_due()
            passes += 1
            totals.merge(report)
            if report.claimed == 0 and report.follow_ups == 0:
                break
        if profiler:
            profiler.disable()
    end = time.time()
    cpu = time.process_time() - cpu
    backend_cpu = process_cpu_seconds(backend_pid) - backend_cpu
    if profiler and profile:
        profiler.dump_stats(profile)
    if detail:
        for key, took in sorted(detail.items(), key=lambda kv: -kv[1])[:12]:
            print(f"SQL {took * 1000:9.1f} ms  {key}", file=sys.stderr)
    return {
        "start": start,
        "end": end,
        "cpu_seconds": cpu,
        "backend_cpu_seconds": backend_cpu,
        "backend_pid": backend_pid,
        "sent": totals.sent,
        "claimed": totals.claimed,
        "failed": totals.failed + totals.bounced + totals.soft_bounced,
        "released": totals.released,
        "account_errors": sorted(set(totals.account_errors)),
        "passes": passes,
        "db_seconds": db.seconds,
        "db_statements": db.calls,
        "statements": statements,
        "commit_seconds": commit.seconds,
        "commits": commit.calls,
        "compose_seconds": compose.seconds,
        "smtp_seconds": smtp_io.seconds,
        "smtp_connect_seconds": smtp_connect.seconds,
        "smtp_connects": smtp_connect.calls // 2,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    sub = parser.add_subparsers(dest="mode", required=True)
    raw = sub.add_parser("raw")
    raw.add_argument("--messages", required=True)
    raw.add_argument("--index", type=int, required=True)
    raw.add_argument("--of", type=int, required=True)
    raw.add_argument("--port", type=int, required=True)
    pipeline = sub.add_parser("pipeline")
    pipeline.add_argument("--profile", default=None, help="write cProfile stats to this file")
    args = parser.parse_args(argv)
    if args.mode == "raw":
        result = run_raw(args.messages, args.index, args.of, args.port)
    else:
        result = run_pipeline(args.profile)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
