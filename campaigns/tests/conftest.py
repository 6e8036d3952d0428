from __future__ import annotations

from datetime import timedelta

import pytest

from campaigns.models import Campaign
from campaigns.simulator import SimulatedInternet, SimulatorServer
from leadcenter.factories import (
    CampaignFactory,
    CampaignStepFactory,
    ContactFactory,
    ContactListFactory,
    SendingAccountFactory,
)


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1 that answers by address (see campaigns.simulator)."""
    with SimulatorServer(SimulatedInternet()) as server:
        yield server


@pytest.fixture
def account(smtp_server):
    return SendingAccountFactory(
        name="Sales",
        from_email="sales@leadcenter.test",
        smtp_port=smtp_server.port,
        return_path="bounces@leadcenter.test",
        smtp_timeout=5,
        daily_limit=1000,
        per_minute_limit=1000,
    )


@pytest.fixture
def audience():
    return ContactListFactory(name="Audience")


@pytest.fixture
def make_campaign(account, audience):
    def make(
        *, steps: int = 1, delay: timedelta = timedelta(0), accounts=None, **kwargs
    ) -> Campaign:
        campaign = CampaignFactory(**kwargs)
        campaign.lists.add(audience)
        campaign.accounts.add(*(accounts or [account]))
        for position in range(1, steps + 1):
            CampaignStepFactory(
                campaign=campaign,
                position=position,
                subject=f"Step {position} for {{{{ contact.first_name }}}}",
                delay=delay if position > 1 else timedelta(0),
            )
        return campaign

    return make


@pytest.fixture
def add_contacts(audience):
    def add(*emails: str, **fields):
        return [ContactFactory(email=email, lists=[audience], **fields) for email in emails]

    return add
