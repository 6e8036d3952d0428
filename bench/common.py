"""Shared plumbing for the benchmarks: the database, Django set-up, results and tables.

Every benchmark runs against PostgreSQL on the server of `DATABASE_URL` (default
postgres://postgres@127.0.0.1:5432/leadcenter_bench) in a database of its own, named after it
(`setup_django("send")` uses leadcenter_bench_send), so two benchmarks never empty each other's
tables; it creates that database when missing, migrates it and empties LeadCenter's tables
before it fills them. Django runs with DEBUG off (no query log kept in memory), as workers do in
production.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/leadcenter_bench"
# A fixed key keeps the benchmark independent of the developer's environment; nothing signed
# with it leaves the machine.
BENCH_SECRET_KEY = "leadcenter-bench-only-key-0123456789-abcdefghijklmnopqrstuvwxyz"  # noqa: S105
_APPS = ("contacts", "campaigns", "tracking")


def bench_environ() -> dict[str, str]:
    """The environment the benchmark and its helper processes run Django with."""
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadcenter.settings")
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("SECRET_KEY", BENCH_SECRET_KEY)
    os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    return dict(os.environ)


def ensure_database(url: str) -> None:
    """CREATE DATABASE when it does not exist (connecting to the `postgres` database)."""
    import psycopg

    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise SystemExit(f"The benchmarks need PostgreSQL; DATABASE_URL is {url!r}.")
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not found:
            conn.execute(f'CREATE DATABASE "{name}"')


_BASE_URL: list[str] = []


def database_url(suffix: str | None) -> str:
    """DATABASE_URL as given, or with `_<suffix>` added to its database name."""
    if not _BASE_URL:
        _BASE_URL.append(bench_environ()["DATABASE_URL"])
    parts = urlsplit(_BASE_URL[0])
    if not suffix:
        return _BASE_URL[0]
    return urlunsplit(parts._replace(path=f"/{parts.path.lstrip('/')}_{suffix}"))


def use_database(suffix: str | None) -> None:
    """Switch this process (and the helper processes it starts later, through DATABASE_URL)
    to the benchmark's own database, creating it when missing."""
    url = database_url(suffix)
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    from django.apps import apps

    if apps.ready:
        from django.db import connection

        connection.close()
        connection.settings_dict["NAME"] = urlsplit(url).path.lstrip("/")


def setup_django(database: str | None = None) -> None:
    """Point Django at the benchmark database `<DATABASE_URL's name>_<database>` (created if
    needed; `migrate()` migrates it)."""
    bench_environ()
    use_database(database)
    import django

    django.setup()
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        raise SystemExit(f"The benchmarks need PostgreSQL, not {engine}.")


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def app_tables() -> list[str]:
    """Every table of LeadCenter's own apps, many-to-many tables included."""
    from django.apps import apps

    tables: set[str] = set()
    for label in _APPS:
        for model in apps.get_app_config(label).get_models():
            tables.add(model._meta.db_table)
            for m2m in model._meta.local_many_to_many:
                tables.add(m2m.remote_field.through._meta.db_table)
    return sorted(tables)


def truncate(tables: Sequence[str] | None = None) -> None:
    """Empty the given tables (default: all of LeadCenter's) and restart their ids."""
    from django.db import connection

    names = ", ".join(connection.ops.quote_name(t) for t in (tables or app_tables()))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")


def execute_autocommit(sql: str) -> None:
    """Run a statement that cannot run in a transaction block (VACUUM, CHECKPOINT)."""
    from django.db import connection

    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute(sql)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as t: ...` then `t[0]` is the elapsed wall time in seconds."""
    elapsed: list[float] = [0.0]
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed[0] = time.perf_counter() - start


@dataclass(frozen=True)
class Result:
    """One figure compared with its target: `value <= target` or `value >= target`."""

    benchmark: str
    name: str
    value: float
    target: float
    higher_is_better: bool
    unit: str = "x"

    @property
    def passed(self) -> bool:
        if self.higher_is_better:
            return self.value >= self.target
        return self.value <= self.target

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    @property
    def target_text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g}{self.unit}"

    def line(self) -> str:
        return (
            f"{self.verdict}  {self.benchmark:<16} {self.name:<44} "
            f"{self.value:>8.3f}{self.unit}  (target {self.target_text})"
        )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def fmt(values: Sequence[str], numeric: Sequence[bool]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        )

    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) or row[i] == "" for row in rows)
        for i in range(len(headers))
    ]
    lines = [fmt(headers, numeric), "  ".join("-" * w for w in widths)]
    lines += [fmt(row, numeric) for row in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def say(text: str = "") -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process on this machine (Linux /proc), 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by all cores since boot (Linux /proc/stat), 0 if unreadable."""
    try:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal guest...: busy is user, nice, system,
    # irq and softirq (guest time is already in user).
    user, nice, system, _idle, _iowait, irq, softirq = (values + [0] * 7)[:7]
    return (user + nice + system + irq + softirq) / _TICKS


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """pid -> (command line, CPU seconds so far) for every process we may read."""
    snapshot: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        snapshot[pid] = (cmdline, process_cpu_seconds(pid))
    return snapshot


def cpu_by_group(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    *,
    database: str,
    ours: set[int],
) -> dict[str, float]:
    """CPU used between two snapshots by PostgreSQL's processes serving our database or no
    database (WAL writer, checkpointer, autovacuum), and by everything else on the machine
    (other people's tests, other databases' sessions), leaving out the pids in `ours`."""
    groups = {"postgres": 0.0, "foreign": 0.0}
    for pid, (cmdline, cpu) in after.items():
        if pid in ours or pid == os.getpid():
            continue
        used = cpu - before.get(pid, (cmdline, 0.0))[1]
        if used <= 0:
            continue
        session = "(" in cmdline  # "postgres: user db 127.0.0.1(port) idle"
        if cmdline.startswith("postgres") and (database in cmdline or not session):
            groups["postgres"] += used
        else:
            groups["foreign"] += used
    return groups


@contextmanager
def foreign_load(database: str) -> Iterator[dict[str, float]]:
    """Measures the share of the machine's CPU that went to anything but this process and
    PostgreSQL's work for `database` (sessions on it, WAL writer, checkpointer) while the block
    ran: other people's processes on a shared machine make timings noisy."""
    load: dict[str, float] = {"share": 0.0}
    before = cpu_snapshot()
    busy = machine_busy_seconds()
    start = time.perf_counter()
    try:
        yield load
    finally:
        wall = time.perf_counter() - start
        busy = machine_busy_seconds() - busy
        after = cpu_snapshot()
        own = after.get(os.getpid(), ("", 0.0))[1] - before.get(os.getpid(), ("", 0.0))[1]
        postgres = cpu_by_group(before, after, database=database, ours=set())["postgres"]
        cores = os.cpu_count() or 1
        load["share"] = max(0.0, busy - own - postgres) / max(1e-9, wall * cores)
