"""factory_boy factories shared by the tests of every app and by benchmarks."""

from __future__ import annotations

import uuid

import factory
from django.contrib.auth import get_user_model

from campaigns.models import Campaign, CampaignRun, CampaignStep, Message, Recipient, SendingAccount
from contacts.models import Contact, ContactList, Suppression, Topic


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@leadcenter.test")
    password = factory.django.Password("correct horse battery staple")
    is_staff = True


class TopicFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Topic
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Topic {n}")


class ContactListFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ContactList
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"List {n}")


class ContactFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Contact
        skip_postgeneration_save = True

    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    email = factory.Sequence(lambda n: f"contact{n}@example.test")
    company = factory.Faker("company")

    @factory.post_generation
    def lists(self, create, extracted, **kwargs):
        if create and extracted:
            self.lists.add(*extracted)


class SuppressionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Suppression

    email = factory.Sequence(lambda n: f"blocked{n}@example.test")
    reason = Suppression.Reason.MANUAL


class SendingAccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SendingAccount
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Account {n}")
    from_email = factory.Sequence(lambda n: f"sales{n}@leadcenter.test")
    from_name = "LeadCenter Sales"
    smtp_host = "127.0.0.1"
    smtp_port = 2525
    smtp_security = SendingAccount.Security.NONE
    active_weekdays = "1234567"


class CampaignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Campaign
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Campaign {n}")


class CampaignStepFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CampaignStep

    campaign = factory.SubFactory(CampaignFactory)
    position = 1
    subject = "Hello {{ contact.first_name }}"
    html_body = "<p>Hi {{ contact.first_name }}, see <a href='https://example.test/'>this</a>.</p>"
    text_body = "Hi {{ contact.first_name }}, see https://example.test/"


class CampaignRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CampaignRun

    campaign = factory.SubFactory(CampaignFactory)


class RecipientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Recipient

    run = factory.SubFactory(CampaignRunFactory)
    contact = factory.SubFactory(ContactFactory)
    email = factory.LazyAttribute(lambda r: r.contact.email)
    account = factory.SubFactory(SendingAccountFactory)


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    recipient = factory.SubFactory(RecipientFactory)
    run = factory.LazyAttribute(lambda m: m.recipient.run)
    step = factory.LazyAttribute(
        lambda m: (
            CampaignStepFactory(campaign=m.recipient.run.campaign, position=1)
            if not m.recipient.run.campaign.steps.filter(position=1).exists()
            else m.recipient.run.campaign.steps.get(position=1)
        )
    )
    account = factory.LazyAttribute(lambda m: m.recipient.account)
    # As the writers of campaigns.services set it: the contact's owner.
    owner_id = factory.LazyAttribute(lambda m: m.recipient.contact.owner_id)
    message_id = factory.LazyFunction(lambda: f"<{uuid.uuid4().hex}@leadcenter.test>")
