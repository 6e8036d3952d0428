"""Bounce tests: the shared SMTP simulator, account and audience fixtures come from the root
conftest.py; these add a real send and a bounce fixture pointed at what was sent."""

from __future__ import annotations

from email.utils import formatdate
from pathlib import Path

import pytest

from campaigns.models import Message
from campaigns.services import campaign_launch, dispatch_due, run_prepare
from contacts.models import Contact
from leadcenter.factories import (
    CampaignFactory,
    CampaignStepFactory,
    ContactFactory,
    ContactListFactory,
)

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"


def delivery_of(server, message: Message):
    """What the SMTP server received for a message: its envelope (the VERP sender) and bytes."""
    wanted = message.message_id.encode()
    return next(d for d in server.handler.delivered if wanted in d.data)


@pytest.fixture
def send(smtp_server, account):
    """Send one real campaign run, over SMTP, to the given addresses: their step-1 messages."""
    counter = iter(range(1, 1000))

    def send(*emails: str, steps: int = 1) -> list[Message]:
        n = next(counter)
        audience = ContactListFactory(name=f"Bounce audience {n}")
        for address in emails:
            contact = Contact.objects.filter(email=address).first()
            if contact is None:
                contact = ContactFactory(email=address, first_name="Ada")
            contact.lists.add(audience)
        campaign = CampaignFactory(name=f"Bounce campaign {n}")
        campaign.lists.add(audience)
        campaign.accounts.add(account)
        for position in range(1, steps + 1):
            CampaignStepFactory(
                campaign=campaign,
                position=position,
                subject=f"Step {position} for {{{{ contact.first_name }}}}",
            )
        run = campaign_launch(campaign=campaign, enqueue=False)
        run_prepare(run=run)
        dispatch_due()
        messages = Message.objects.filter(run=run, step__position=1)
        by_email = {m.recipient.email: m for m in messages.select_related("recipient")}
        return [by_email[address] for address in emails]

    return send


@pytest.fixture
def bounce_for(smtp_server):
    """A fixture file pointed at a message we really sent: {{VERP}} is the envelope sender it
    went out with, {{MESSAGE_ID}} its Message-ID, {{RECIPIENT}} its address. Keyword arguments
    override any of them (verp=, message_id=, recipient=)."""

    def fill(name: str, message: Message | None = None, **values: str) -> bytes:
        defaults = {"verp": "bounces@leadcenter.test", "message_id": "<none@elsewhere.test>"}
        if message is not None:
            defaults = {
                "verp": delivery_of(smtp_server, message).mail_from,
                "message_id": message.message_id,
                "recipient": message.recipient.email,
            }
        defaults.setdefault("recipient", "nobody@example.net")
        defaults["date"] = formatdate()
        defaults.update(values)
        raw = (FIXTURES / name).read_bytes()
        for key, value in defaults.items():
            raw = raw.replace(b"{{" + key.upper().encode() + b"}}", value.encode())
        return raw

    return fill
