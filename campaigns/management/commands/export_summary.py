"""manage.py export_summary (--campaign NAME_OR_ID | --run ID) -o FILE.xlsx

Writes the campaign summary as an Excel file: the same workbook as the summary page's
"Export to Excel" (campaigns.exports.summary_export_write).
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns import exports, reports
from campaigns.models import Campaign, CampaignRun


class Command(BaseCommand):
    help = "Write a campaign's (or one run's) summary, overall and per record owner, to Excel."

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--campaign", help="the campaign's name or id")
        which.add_argument("--run", type=int, help="a run's id: its campaign, that run only")
        parser.add_argument("-o", "--output", required=True, help="the .xlsx file to write")

    def handle(self, *args, campaign: str | None, run: int | None, output: str, **options):
        if run is not None:
            found = CampaignRun.objects.select_related("campaign").filter(pk=run).first()
            if found is None:
                raise CommandError(f"No run #{run}.")
            scope = reports.SummaryScope(campaign=found.campaign, run=found)
        else:
            scope = reports.SummaryScope(campaign=self._campaign(campaign or ""))
        sections = reports.campaign_summary(scope)
        path = Path(output)
        with path.open("wb") as fh:
            exports.summary_export_write(sections, scope, fh)
        overall = sections[0].counts
        self.stdout.write(
            f"Wrote {path}: {scope.campaign.name}"
            + (f", run #{scope.run.pk}" if scope.run else "")
            + f", {len(sections) - 1} owner sections, {overall['attempted']} sent."
        )

    def _campaign(self, name_or_id: str) -> Campaign:
        found = Campaign.objects.filter(name=name_or_id).first()
        if found is None and name_or_id.isdigit():
            found = Campaign.objects.filter(pk=int(name_or_id)).first()
        if found is None:
            raise CommandError(f"No campaign named or numbered {name_or_id!r}.")
        return found
