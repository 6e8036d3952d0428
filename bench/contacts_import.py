"""Contact import: the import of a CSV file against a raw bulk_create of the same contacts.

What is measured: `ContactResource().import_file(...)`, what `manage.py import_contacts` and the
admin's background import run, over a CSV file of 100,000 rows (`--quick`: 20,000) as another
system exports it: email, first and last name (some non-ASCII), company, owner (one of five
users, by username), stage, the three flags, one list of five. It reads and decodes the file,
checks every row (address syntax with Django's EmailValidator, flags, stage, lengths,
duplicates), looks up owners and lists, matches each chunk of 2,000 rows against existing
contacts by lower(email), and writes contacts and list memberships with bulk_create. Into an
empty contacts table, so every row is a new contact.

Baseline: the same contacts already in memory as Python values (no file, no checks, no
matching), built as Contact objects and written with `bulk_create(batch_size=2000)`, then their
list memberships with one bulk_create of the through rows, in one transaction: what a
hand-written loader does at best.

Between timed runs the contact tables are truncated and a CHECKPOINT flushes the previous
run's writes; the two sides alternate and the best time of each counts.

Targets: the import <= 3x the baseline at 100,000 rows; and scaling: the 100,000-row import
<= 11x the 10,000-row one (`--quick`: 20,000 vs 2,000, the same 10x step and target).

    python -m bench.contacts_import [--quick]

It uses a database of its own, leadcenter_bench_import, on the PostgreSQL server of
DATABASE_URL (default postgres://postgres@127.0.0.1:5432/), created and migrated when missing.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

NAME = "contacts_import"
DATABASE = "leadcenter_bench_import"
DEFAULT_SERVER_URL = "postgres://postgres@127.0.0.1:5432/postgres"
RATIO_TARGET = 3.0
SCALING_TARGET = 11.0
FULL_SIZES = (10_000, 100_000)
QUICK_SIZES = (2_000, 20_000)
BATCH = 2000
OWNERS = ("olivia", "oscar", "ophelia", "otto", "oona")
LISTS = ("Customers", "Newsletter", "Trade fair", "Partners", "Webinar")
STAGES = ("subscriber", "subscriber", "subscriber", "lead", "opportunity", "customer")
FIRST = ("Ada", "Zoë", "Jürgen", "Łucja", "Sam", "Noor", "Ines", "Björn", "Chen", "Maria")
LAST = ("Lovelace", "Ångström", "Müller", "Nowak", "Smith", "Haddad", "García", "Ødegaard")
# A fixed key keeps the run independent of the developer's environment; nothing signed with
# it leaves the machine.
BENCH_SECRET_KEY = "leadcenter-bench-import-key-0123456789-abcdefghijklmnopqrstuvwxyz"  # noqa: S105

Figure = tuple[str, float, float, bool]  # name, measured ratio, target, passed


def say(text: str = "") -> None:
    print(text, flush=True)


# --- database and Django -------------------------------------------------------------------


def _database_url() -> str:
    """This benchmark's own database on the server of DATABASE_URL: it empties tables, so it
    never runs in a database that might hold anything else."""
    os.environ.setdefault("DATABASE_URL", DEFAULT_SERVER_URL)
    parts = urlsplit(os.environ["DATABASE_URL"])
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        parts = urlsplit(DEFAULT_SERVER_URL)
    return urlunsplit(parts._replace(path=f"/{DATABASE}"))


def _ensure_database(url: str) -> None:
    import psycopg

    admin_url = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def setup() -> None:
    url = _database_url()
    _ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadcenter.settings")
    os.environ.setdefault("DEBUG", "false")  # no query log kept in memory
    os.environ.setdefault("SECRET_KEY", BENCH_SECRET_KEY)
    os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    from django.apps import apps

    if apps.ready:
        # Run after another benchmark in the same process (python -m bench): switch over.
        from django.db import connection

        connection.close()
        connection.settings_dict["NAME"] = DATABASE
    else:
        import django

        django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit(f"This benchmark needs PostgreSQL, not {connection.vendor}.")
    call_command("migrate", verbosity=0, interactive=False)


def _sql(statement: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement)


def _empty_contacts() -> None:
    from contacts.models import Contact, Suppression

    tables = [
        Contact._meta.db_table,
        Contact.lists.through._meta.db_table,
        Contact.opted_out_topics.through._meta.db_table,
        Suppression._meta.db_table,
    ]
    _sql(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    _sql("CHECKPOINT")


def _fixtures() -> tuple[dict[str, int], dict[str, int]]:
    """Owners and lists both sides refer to (kept between runs)."""
    from django.contrib.auth import get_user_model

    from contacts.models import ContactList

    User = get_user_model()
    owners = {name: User.objects.get_or_create(username=name)[0].pk for name in OWNERS}
    lists = {name: ContactList.objects.get_or_create(name=name)[0].pk for name in LISTS}
    return owners, lists


# --- data ----------------------------------------------------------------------------------

HEADER = (
    "email,first_name,last_name,company,owner,stage,do_not_email,do_not_mass_email,"
    "unsubscribed,lists"
)


def _rows(count: int) -> list[tuple[str, ...]]:
    rng = random.Random(count)
    rows = []
    for i in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        rows.append(
            (
                f"{first.lower()}.{i}@example-{i % 97}.com".replace("ë", "e")
                .replace("ü", "u")
                .replace("ł", "l")
                .replace("ö", "o"),
                first,
                last,
                f"{last} & Co {i % 1000}",
                rng.choice(OWNERS),
                rng.choice(STAGES),
                rng.choice(("no", "no", "no", "yes")),
                rng.choice(("no", "no", "yes")),
                "no",
                rng.choice(LISTS),
            )
        )
    return rows


def _write_csv(rows: list[tuple[str, ...]], directory: Path) -> Path:
    import csv

    path = directory / f"contacts-{len(rows)}.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        fh.write(HEADER + "\r\n")
        csv.writer(fh).writerows(rows)
    return path


# --- the two sides -------------------------------------------------------------------------


def _baseline(rows: list[tuple[str, ...]], owners: dict[str, int], lists: dict[str, int]) -> None:
    from django.db import transaction
    from django.utils import timezone

    from contacts.models import Contact

    through = Contact.lists.through
    now = timezone.now()
    with transaction.atomic():
        contacts = [
            Contact(
                email=email,
                first_name=first,
                last_name=last,
                company=company,
                owner_id=owners[owner],
                stage=stage,
                lead_at=now if stage in ("lead", "opportunity") else None,
                opportunity_at=now if stage == "opportunity" else None,
                do_not_email=dne == "yes",
                do_not_mass_email=dnme == "yes",
            )
            for email, first, last, company, owner, stage, dne, dnme, _unsub, _list in rows
        ]
        Contact.objects.bulk_create(contacts, batch_size=BATCH)
        through.objects.bulk_create(
            [
                through(contact_id=contact.pk, contactlist_id=lists[row[9]])
                for contact, row in zip(contacts, rows, strict=True)
            ],
            batch_size=BATCH,
        )


def _import(path: Path, expected: int, *, dry_run: bool = False) -> None:
    from contacts.resources import ContactResource

    with path.open("rb") as fh:
        report = ContactResource().import_file(fh, file_name=path.name, dry_run=dry_run)
    done = report.created if report.created else report.unchanged
    if report.fatal or report.errors or done != expected:
        raise SystemExit(f"The import did not take every row: {report.summary()}")


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _measure(work: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and of the PostgreSQL backend serving it).

    The CPU figure is for information: on a machine shared with other work it moves less
    than wall time, which waits for the CPU whenever others have it."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    cpu, server, start = time.process_time(), _cpu_seconds(backend), time.perf_counter()
    work()
    wall = time.perf_counter() - start
    return wall, time.process_time() - cpu + _cpu_seconds(backend) - server


def main(*, quick: bool = False) -> list[Figure]:
    """Run the benchmark, print its table, return (name, ratio, target, passed) figures."""
    setup()
    owners, lists = _fixtures()
    small, large = QUICK_SIZES if quick else FULL_SIZES
    say(
        f"{NAME}: CSV import vs raw bulk_create, {small:,} and {large:,} rows, PostgreSQL "
        f"database {DATABASE}"
    )
    wall: dict[tuple[str, int], float] = {}
    cpu: dict[tuple[str, int], float] = {}

    def best(side: str, size: int, work: Callable[[], None]) -> None:
        _empty_contacts()
        seconds, cpu_seconds = _measure(work)
        wall[(side, size)] = min(wall.get((side, size), seconds), seconds)
        cpu[(side, size)] = min(cpu.get((side, size), cpu_seconds), cpu_seconds)

    with tempfile.TemporaryDirectory(prefix="lc-bench-import-") as tmp:
        # More runs of the small size: a second of noise from other processes weighs more there.
        for size, runs in ((small, 5), (large, 3)):
            rows = _rows(size)
            path = _write_csv(rows, Path(tmp))
            for _ in range(runs):  # alternate the sides; the best of each counts
                best("baseline", size, lambda rows=rows: _baseline(rows, owners, lists))
                best("import", size, lambda path=path, size=size: _import(path, size))
            if size == large:
                # For information: the same file again, every row matched and unchanged, and
                # the dry run the admin's preview makes of it.
                again, preview = (
                    lambda path=path, size=size, dry_run=dry_run: _import(
                        path, size, dry_run=dry_run
                    )
                    for dry_run in (False, True)
                )
                wall["again", size], _ = _measure(again)
                wall["preview", size], _ = _measure(preview)
    _empty_contacts()

    ratio = wall["import", large] / wall["baseline", large]
    scaling = wall["import", large] / wall["import", small]
    figures: list[Figure] = [
        (f"import / raw bulk_create at {large:,} rows", ratio, RATIO_TARGET, ratio <= RATIO_TARGET),
        (
            f"import {large:,} rows / import {small:,} rows",
            scaling,
            SCALING_TARGET,
            scaling <= SCALING_TARGET,
        ),
    ]
    say(f"{'':>9}  {'wall time':^22}  {'CPU (ours + PostgreSQL)':^24}")
    say(f"{'rows':>9}  {'bulk_create':>11}  {'import':>9}  {'bulk_create':>11}  {'import':>11}")
    for size in (small, large):
        say(
            f"{size:>9,}  {wall['baseline', size]:>10.3f}s  {wall['import', size]:>8.3f}s  "
            f"{cpu['baseline', size]:>10.3f}s  {cpu['import', size]:>10.3f}s"
        )
    say(
        f"CPU, for information: import / bulk_create at {large:,} rows "
        f"{cpu['import', large] / cpu['baseline', large]:.3f}x; import {large:,} / {small:,} "
        f"rows {cpu['import', large] / cpu['import', small]:.3f}x; bulk_create {large:,} / "
        f"{small:,} rows wall {wall['baseline', large] / wall['baseline', small]:.3f}x"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    say(
        f"the same {large:,} rows again (all unchanged): {wall['again', large]:.3f}s; "
        f"their dry run (the admin's preview): {wall['preview', large]:.3f}s; "
        f"peak memory of this process: {peak:,.0f} MB"
    )
    for name, value, target, passed in figures:
        say(
            f"{'PASS' if passed else 'MISS'}  {NAME:<16} {name:<44} {value:>8.3f}x  "
            f"(target <= {target:g}x)"
        )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.contacts_import")
    parser.add_argument("--quick", action="store_true", help="20,000 and 2,000 rows")
    args = parser.parse_args()
    main(quick=args.quick)
    sys.exit(0)
