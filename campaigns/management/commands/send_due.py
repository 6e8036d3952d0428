from __future__ import annotations

from django.core.management.base import BaseCommand

from campaigns import services


class Command(BaseCommand):
    help = (
        "Send every message that is due now (follow-ups whose time has come, retries, resumed "
        "runs), as the scheduled dispatch does. With --until-idle, repeat until nothing is due."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--until-idle", action="store_true")

    def handle(self, *args, **options) -> None:
        total = services.DispatchReport()
        while True:
            report = services.dispatch_due()
            total.merge(report)
            if not options["until_idle"] or (report.claimed == 0 and report.follow_ups == 0):
                break
        self.stdout.write(
            f"Sent {total.sent} · soft bounced {total.soft_bounced} · bounced {total.bounced} · "
            f"failed {total.failed} · follow-ups queued {total.follow_ups}"
        )
        for error in dict.fromkeys(total.account_errors):
            self.stderr.write(f"Account error: {error}")
