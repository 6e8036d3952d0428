"""Send CPU per email, one worker: a diagnostic for work on the send path, not a target.

The send benchmark's ratio (bench/send_throughput.py) moves by 10-20% from run to run on a
shared 2-core machine, which hides a change worth a few percent. This one measures what such a
change moves: the CPU time, per email, of one worker (this process, `time.process_time`), of its
PostgreSQL backend and of the SMTP sink, sending N emails of the send benchmark's campaign step
through `dispatch_due()`. A warm-up run comes first (imports, compiled templates, caches) and is
not counted; then the median of R runs. The sink's CPU per email is the same work in every run:
when it moves, the machine's speed moved, and the worker's figure with it.

    python -m bench.send_cpu [--messages N] [--runs R] [--perf FILE]

To compare two versions of the code, run it on each, or swap the function under study between
runs in one process (A B B A), which leaves the machine's drift out.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import tempfile
import time

from bench import common
from bench.common import say, table
from bench.send_throughput import _free_port, _setup, _wait_for_port, start_sink


def _one_run(
    n: int, port: int, sink_pid: int, perf: str | None = None
) -> tuple[float, float, float, float]:
    """(worker, backend, sink) ms of CPU per email, and emails per second. `perf`: record the
    PostgreSQL backend's call stacks meanwhile into this file (`perf report -i FILE`)."""
    from django.db import connection

    from campaigns.services import dispatch_due

    connection.close()
    _setup(n, port)
    common.execute_autocommit("VACUUM ANALYZE")
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = cursor.fetchone()[0]
    recorder = None
    if perf:
        command = ["perf", "record", "-g", "-q", "-o", perf, "-p", str(backend_pid)]
        recorder = subprocess.Popen(command, stderr=subprocess.DEVNULL)  # noqa: S603
        time.sleep(0.5)  # perf attaches
    backend = common.process_cpu_seconds(backend_pid)
    sink = common.process_cpu_seconds(sink_pid)
    cpu, wall, sent = time.process_time(), time.perf_counter(), 0
    while True:
        report = dispatch_due()
        sent += report.sent
        if not report.claimed:
            break
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    backend = common.process_cpu_seconds(backend_pid) - backend
    sink = common.process_cpu_seconds(sink_pid) - sink
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    if sent != n:
        raise SystemExit(f"{sent:,} of {n:,} emails sent")
    per = 1000.0 / sent
    return cpu * per, backend * per, sink * per, sent / wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.send_cpu")
    parser.add_argument("--messages", type=int, default=4000, help="emails per run")
    parser.add_argument("--runs", type=int, default=5, help="runs after the warm-up")
    parser.add_argument(
        "--perf", metavar="FILE", help="perf record the database backend of the last run"
    )
    args = parser.parse_args(argv)
    common.setup_django("send_cpu")
    common.migrate()
    say(f"== send CPU, one worker: {args.messages:,} emails a run, warm-up + {args.runs} runs ==")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="lc-bench-") as tmp:
        sink = start_sink(port, tmp)
        try:
            _wait_for_port(port, sink)
            _one_run(args.messages, port, sink.pid)
            runs = [
                _one_run(args.messages, port, sink.pid, args.perf if k == args.runs - 1 else None)
                for k in range(args.runs)
            ]
        finally:
            sink.terminate()
            sink.wait(timeout=10)
    columns = list(zip(*runs, strict=True))
    say(
        table(
            ["", "worker ms/email", "backend ms/email", "sink ms/email", "emails/s"],
            [[f"run {k + 1}", *run] for k, run in enumerate(runs)]
            + [["median", *(statistics.median(c) for c in columns)]],
        )
    )


if __name__ == "__main__":
    main()
