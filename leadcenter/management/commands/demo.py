from __future__ import annotations

import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from leadcenter.demo import DemoSummary, demo_load


class Command(BaseCommand):
    help = (
        "Migrate, create an admin login (printed at the end) and load demo owners in every role, "
        "contacts, two sending accounts and draft campaigns. Safe to run again: nothing is "
        "duplicated, and the shared demo password is replaced each time."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--admin-url",
            default="http://127.0.0.1:8000/admin/",
            help="The admin's address to print (make demo passes its HOST and PORT).",
        )
        parser.add_argument(
            "--login-file",
            help="Also write the login block to this file (make demo prints it again once the "
            "admin is up).",
        )
        parser.add_argument(
            "--password",
            help="Password for the admin login and the demo users (default: a new random one, "
            "printed at the end).",
        )
        parser.add_argument(
            "--contacts",
            type=int,
            default=3000,
            help="How many contacts to load on the first run (default 3000).",
        )
        parser.add_argument(
            "--seed", type=int, default=7, help="Random seed for the generated contacts."
        )
        parser.add_argument(
            "--smtp-port",
            type=int,
            default=2525,
            help="Port of the simulated internet (smtp_simulator) the demo accounts send to "
            "(default 2525).",
        )
        parser.add_argument(
            "--bounce-maildir",
            default="var/bounces",
            help="The Maildir the simulated internet writes its later bounces to, read once the "
            "demo runs are sent (default var/bounces, as smtp_simulator's).",
        )
        parser.add_argument(
            "--no-send",
            action="store_true",
            help="Load the data only; send no demo runs through the simulated internet.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["contacts"] < 0:
            raise CommandError("--contacts must be 0 or more.")
        if not 1 <= options["smtp_port"] <= 65535:
            raise CommandError("--smtp-port must be between 1 and 65535.")
        if options["password"] == "":
            raise CommandError("--password must not be empty.")

        started = time.monotonic()
        summary = demo_load(
            contacts=options["contacts"],
            seed=options["seed"],
            password=options["password"],
            smtp_port=options["smtp_port"],
            send=not options["no_send"],
            bounce_maildir=options["bounce_maildir"],
        )
        self._print_summary(
            summary,
            no_send=options["no_send"],
            login_file=options["login_file"],
            admin_url=options["admin_url"],
        )
        self.stdout.write(f"Done in {time.monotonic() - started:.1f} s.")

    def _print_summary(
        self, summary: DemoSummary, *, no_send: bool, login_file: str | None, admin_url: str
    ) -> None:
        c = summary.contacts
        write = self.stdout.write
        if summary.contacts_created:
            write(f"Loaded {summary.contacts_created} demo contacts.")
        else:
            write("Demo contacts were already loaded; none added.")
        write(
            f"Contacts: {c['total']} in all · unsubscribed {c['unsubscribed']} · "
            f"do not email {c['do_not_email']} · do not mass email {c['do_not_mass_email']} · "
            f"invalid address {c['invalid']} · no address {c['no_email']} · "
            f"opted out of a topic {c['opted_out_of_a_topic']}"
        )
        write(
            f"Stages: leads {c['leads']} · opportunities {c['opportunities']} · "
            f"customers {c['customers']} · suppressed addresses {c['suppressed']}"
        )
        write("Lists: " + " · ".join(f"{name} {n}" for name, n in sorted(summary.lists.items())))
        write(f"Sending accounts: {', '.join(summary.accounts)}")
        write(
            "Campaigns: "
            + " · ".join(
                f"{name} ({n} step{'s' if n != 1 else ''})"
                for name, n in sorted(summary.campaigns.items())
            )
        )
        if no_send:
            write("--no-send: no demo runs sent.")
        elif summary.runs:
            write("Demo runs sent through the simulated internet:")
            for line in summary.runs:
                write(f"  {line}")
        else:
            write("Demo runs were already sent; none added.")

        login = [
            "",
            "=" * 60,
            f"  Admin:    {admin_url}",
            f"  Username: {summary.admin_username}",
            f"  Password: {summary.password}",
            "=" * 60,
            "The demo users share that password; log in as each to try its role:",
        ]
        login += [f"  {username:<15} {group}" for username, group in summary.users]
        if summary.password_generated:
            login.append("The password is new on every run; pass --password to keep one.")
        write(self.style.SUCCESS("\n".join(login)))
        if login_file:
            path = Path(login_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(login[1:]) + "\n")
            path.chmod(0o600)
