"""manage.py import_contacts FILE [--owner USER] [--list NAME] [--dry-run] [--rejects PATH]

Imports a CSV or XLSX file of contacts with the rules of the admin's import (see
contacts.imports): every bad row is reported with its line and reason and written to a rejects
file; the good rows are imported. Exits with status 1 when the file cannot be read at all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db.models.functions import Lower

from contacts.imports import RowPlan, rejects_extension, write_rejects
from contacts.resources import ContactResource


class ProgressBar:
    """A one-line bar on the terminal, redrawn at most ten times a second."""

    WIDTH = 30

    def __init__(self, out: OutputWrapper, *, dry_run: bool) -> None:
        self.out = out
        self.labels = {"checking": "Checking", "importing": "Planning" if dry_run else "Importing"}
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        share = done / total if total else 1.0
        filled = int(share * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        rows = f"  {done:,}/{total:,} rows" if stage == "importing" else ""
        line = f"\r{self.labels.get(stage, stage):<10}[{bar}] {share:4.0%}{rows}"
        self.out.write(line, ending="\n" if done >= total else "")
        self.out.flush()


class Command(BaseCommand):
    help = (
        "Import contacts from a CSV or XLSX file. Bad rows are reported with their line and "
        "reason and written to a rejects file; good rows are imported."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="a .csv or .xlsx file")
        parser.add_argument(
            "--owner",
            help="owner (username or email) of the rows whose owner cell is blank, for new "
            "contacts and contacts without an owner; it never replaces an existing owner",
        )
        parser.add_argument(
            "--list",
            dest="list_name",
            default="",
            help="add every imported contact to this list (created if missing)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="change nothing; print what would happen"
        )
        parser.add_argument(
            "--rejects",
            help="where to write the bad rows (default: FILE-rejects.csv or .xlsx next to "
            "FILE; with --dry-run, only when given)",
        )
        parser.add_argument(
            "--progress",
            action="store_true",
            default=None,
            help="show a progress bar (default: when the output is a terminal)",
        )
        parser.add_argument("--no-progress", action="store_false", dest="progress")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["file"])
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        dry_run: bool = options["dry_run"]
        verbosity: int = options["verbosity"]
        owner_id = self._owner_id(options["owner"]) if options["owner"] else None
        show_progress = options["progress"]
        if show_progress is None:
            show_progress = self.stderr.isatty()
        progress = ProgressBar(self.stderr, dry_run=dry_run) if show_progress else None

        def print_plan(plan: RowPlan) -> None:
            changes = ", ".join(
                f"{k}: {old!r} -> {new!r}" for k, (old, new) in plan.changes.items()
            )
            label = plan.email or plan.name
            self.stdout.write(
                f"line {plan.line}: {plan.action} {label}" + (f" ({changes})" if changes else "")
            )

        with path.open("rb") as fh:
            report = ContactResource().import_file(
                fh,
                file_name=path.name,
                default_owner_id=owner_id,
                list_name=options["list_name"],
                dry_run=dry_run,
                progress=progress,
                on_plan=print_plan if verbosity >= 2 else None,
            )
        if report.fatal:
            raise CommandError(report.summary())
        if verbosity >= 1:
            self.stdout.write(f"{path.name}: {report.file_format}")
        for reject in report.errors:
            self.stderr.write(f"line {reject.line}: {reject.reason}")
        for remark in report.remarks():
            self.stdout.write(remark)
        if report.errors and (options["rejects"] or not dry_run):
            default = path.with_name(f"{path.stem}-rejects.{rejects_extension(report)}")
            target = Path(options["rejects"] or default)
            with target.open("wb") as out:
                write_rejects(report, out)
            self.stdout.write(f"Bad rows written to {target} (the reason in its first column).")
        prefix = "Dry run, nothing changed: " if dry_run else ""
        style = self.style.WARNING if report.errors else self.style.SUCCESS
        self.stdout.write(style(prefix + report.summary()))

    def _owner_id(self, name: str) -> int:
        User = get_user_model()
        value = name.strip().lower()
        users = User.objects.annotate(_u=Lower(User.USERNAME_FIELD), _e=Lower("email"))
        ids = list(users.filter(_u=value).values_list("pk", flat=True)) or list(
            users.filter(_e=value).values_list("pk", flat=True)
        )
        if len(ids) != 1:
            reason = "no user has" if not ids else f"{len(ids)} users have"
            raise CommandError(f"--owner {name}: {reason} that username or email address.")
        return ids[0]
