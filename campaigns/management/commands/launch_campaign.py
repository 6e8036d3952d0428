from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from campaigns import services
from campaigns.models import Campaign, CampaignRun
from campaigns.selectors import run_progress


class Command(BaseCommand):
    help = (
        "Start a run of a campaign (by name or id). With --wait, prepare and send it in this "
        "process, without a worker cluster, showing progress, until nothing more is due now."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("campaign", help="The campaign's name or id.")
        parser.add_argument("--wait", action="store_true", help="Send it here and now.")

    def handle(self, *args, **options) -> None:
        campaign = campaign_lookup(options["campaign"])
        try:
            run = services.campaign_launch(campaign=campaign, enqueue=not options["wait"])
        except services.CampaignError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Run #{run.pk} of {campaign.name} started.")
        if not options["wait"]:
            self.stdout.write("The workers (manage.py qcluster) prepare and send it.")
            return
        run = services.run_prepare(run=run)
        self.stdout.write(
            f"Audience: {run.total_recipients} recipients, {run.total_filtered} filtered out."
        )
        while True:
            report = services.dispatch_due()
            self._progress(run)
            if report.claimed == 0 and report.follow_ups == 0:
                break
        run.refresh_from_db()
        if self.stdout.isatty():
            self.stdout.write("")
        progress = run_progress(run=run)
        self.stdout.write(
            f"Run #{run.pk}: {run.get_status_display()} · {progress.percent:.0f}% · "
            + " · ".join(f"{label} {n}" for label, n in progress.counts.items() if n)
        )
        if run.status not in (CampaignRun.Status.COMPLETED, CampaignRun.Status.FILTERED):
            self.stdout.write(
                "Something is still due later (follow-ups, retries, limits or active hours); "
                "the workers or `manage.py send_due` send it when its time comes."
            )

    def _progress(self, run: CampaignRun) -> None:
        progress = run_progress(run=run)
        width = 30
        filled = int(width * progress.percent / 100)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {progress.percent:5.1f}% "
        line += f"({progress.done} of {progress.total})"
        if self.stdout.isatty():
            sys.stdout.write("\r" + line)
            sys.stdout.flush()
        else:
            self.stdout.write(line)


def campaign_lookup(name_or_id: str) -> Campaign:
    queryset = Campaign.objects.all()
    found = queryset.filter(name=name_or_id).first()
    if found is None and name_or_id.isdigit():
        found = queryset.filter(pk=int(name_or_id)).first()
    if found is None:
        raise CommandError(f"No campaign named or numbered {name_or_id!r}.")
    return found
