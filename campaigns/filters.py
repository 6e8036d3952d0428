"""FilterSets of the custom report pages."""

from __future__ import annotations

from typing import Any

import django_filters
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django_filters.fields import ModelChoiceField

from campaigns import reports
from campaigns.models import Campaign, CampaignRun, Recipient


class RunChoiceField(ModelChoiceField):
    def label_from_instance(self, obj: CampaignRun) -> str:
        started = f", started {obj.started_at:%Y-%m-%d}" if obj.started_at else ""
        return f"Run #{obj.pk} ({obj.get_status_display().lower()}{started})"


class RunFilter(django_filters.ModelChoiceFilter):
    field_class = RunChoiceField


class OwnerChoiceField(ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return reports.owner_name(obj)


class OwnerFilter(django_filters.ModelChoiceFilter):
    field_class = OwnerChoiceField


class CampaignSummaryFilter(django_filters.FilterSet):
    """The campaign summary's filters: one run, one record owner (or contacts without one),
    and the days on which the contacts were first emailed. The page turns the cleaned values
    into a reports.SummaryScope (`scope()`) and reads its figures from the counters (those of
    the days in range, with a date range); `qs` selects the same recipients as
    reports.summary_recipients, which the tests check."""

    run = RunFilter(queryset=CampaignRun.objects.none(), empty_label="All runs")
    owner = OwnerFilter(
        field_name="contact__owner",
        label="Record owner",
        queryset=get_user_model().objects.none(),
        empty_label="All owners",
        null_label="No owner",
    )
    # The parameters stay sent_after/sent_before (links and bookmarks keep working).
    sent = django_filters.DateFromToRangeFilter(
        label="First emailed between",
        help_text=reports.DATE_RANGE_HELP,
        method="filter_sent",
        widget=django_filters.widgets.DateRangeWidget(attrs={"type": "date"}),
    )

    class Meta:
        model = Recipient
        fields = ["run", "owner", "sent"]

    def __init__(self, data: Any = None, *, campaign: Campaign, **kwargs: Any) -> None:
        self.campaign = campaign
        super().__init__(data, queryset=Recipient.objects.filter(run__campaign=campaign), **kwargs)
        self.filters["run"].queryset = campaign.runs.order_by("-created")
        self.filters["owner"].queryset = reports.summary_owner_choices(campaign)

    def filter_sent(self, queryset: QuerySet[Recipient], name: str, value: Any) -> QuerySet:
        if not value or not (value.start or value.stop):
            return queryset
        start = value.start.date() if value.start else None
        # DateFromToRangeFilter makes the end the last moment of its day; the day counts.
        stop = value.stop.date() if value.stop else None
        return queryset.filter(reports.first_emailed_q(start, stop))

    def scope(self) -> reports.SummaryScope:
        """The cleaned filters as a SummaryScope (call after is_valid())."""
        data = self.form.cleaned_data if self.is_bound and self.form.is_valid() else {}
        owner = data.get("owner")
        if owner == self.filters["owner"].null_value:
            owner_key = reports.NO_OWNER
        else:
            owner_key = owner.pk if owner else None
        sent = data.get("sent")
        return reports.SummaryScope(
            campaign=self.campaign,
            run=data.get("run"),
            owner_key=owner_key,
            sent_from=sent.start.date() if sent and sent.start else None,
            sent_to=sent.stop.date() if sent and sent.stop else None,
        )
