from __future__ import annotations

import sys
from collections.abc import Iterator

from django.core.management.base import BaseCommand, CommandError

from tracking import bounces
from tracking.models import BounceMailbox


class Command(BaseCommand):
    help = (
        "Read bounce and feedback-report messages (and auto-replies) from files (one raw "
        "message each; '-' for standard input), a Maildir, an mbox, or an account's IMAP/POP3 "
        "bounce mailbox, and record them. Reading the same message twice records nothing new."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("files", nargs="*", metavar="FILE")
        parser.add_argument("--maildir", metavar="DIR", help="read its new (unseen) messages")
        parser.add_argument("--mbox", metavar="FILE")
        parser.add_argument(
            "--account", metavar="NAME", help="poll this sending account's bounce mailbox"
        )
        parser.add_argument(
            "--delete",
            action="store_true",
            help="delete Maildir/mbox messages once recorded (default: a Maildir message is "
            "moved to cur/ and marked seen)",
        )

    def handle(self, *args, **options) -> None:
        files, maildir, mbox = options["files"], options["maildir"], options["mbox"]
        account = options["account"]
        if not (files or maildir or mbox or account):
            raise CommandError("Give FILE(s), --maildir DIR, --mbox FILE or --account NAME.")
        report = bounces.BounceReport()
        try:
            if files:
                bounces.bounces_process(
                    messages=self._files(files), report=report, batch=bounces.FILE_BATCH
                )
            if maildir:
                source = bounces.maildir_messages(maildir, delete=options["delete"])
                self._process(source, report)
            if mbox:
                source = bounces.mbox_messages(mbox, delete=options["delete"])
                self._process(source, report)
            if account:
                mailbox = BounceMailbox.objects.filter(account__name=account).first()
                if mailbox is None:
                    raise CommandError(f"No bounce mailbox is set up for account {account!r}.")
                report.merge(bounces.mailbox_poll(mailbox_id=mailbox.pk))
                mailbox.refresh_from_db()
                if mailbox.last_error:
                    self.stderr.write(f"Mailbox {mailbox}: {mailbox.last_error}")
        except OSError as exc:
            raise CommandError(f"{exc}  ({report.summary()})") from exc
        self.stdout.write(report.summary())

    def _files(self, paths: list[str]) -> Iterator[bytes]:
        for path in paths:
            if path == "-":
                yield sys.stdin.buffer.read()
            else:
                yield from bounces.file_messages([path])

    def _process(self, source: Iterator[bytes], report: bounces.BounceReport) -> None:
        try:
            bounces.bounces_process(messages=source, report=report)
        finally:
            source.close()  # acknowledges nothing more; releases an mbox lock
