"""The demo data set: an admin login, owners in every role, contacts, accounts and campaigns.

`python manage.py demo` is a thin wrapper around `demo_load`. Everything here is idempotent, so
a newcomer can run the command again at any time: existing rows are kept (get_or_create), only
the shared demo password is replaced, and contacts are loaded only once.

Names come from small embedded lists rather than Faker, which is a development dependency only.
The same seed gives the same contacts, so screenshots and documentation stay reproducible.
"""

from __future__ import annotations

import random
import secrets
import socket
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import StringIO

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import AbstractUser, Group
from django.core.management import call_command
from django.db import transaction
from django.db.models import Count, Q
from django.db.models.functions import Lower
from django.utils import timezone

from campaigns.models import Campaign, CampaignStep, SendingAccount
from contacts.models import Contact, ContactList, Suppression, Topic

ADMIN_USERNAME = "admin"

STAFF_GROUP = "Staff"
MANAGERS_GROUP = "Managers"
SUPPORT_GROUP = "Support"

TOPIC_NEWSLETTER = "Newsletter"
TOPIC_EVENTS = "Events"
TOPIC_PRODUCT_UPDATES = "Product updates"

LIST_EMEA = "Prospects EMEA"
LIST_AMERICAS = "Prospects Americas"
LIST_WEBINAR = "Webinar attendees"
LIST_CUSTOMERS = "Customers"

ACCOUNT_EU = "Sales EU"
ACCOUNT_US = "Sales US"

EMEA = "emea"
AMERICAS = "americas"


@dataclass(frozen=True)
class DemoUser:
    username: str
    first_name: str
    last_name: str
    group: str
    # The region whose prospects the user owns; None for users who own no contacts.
    region: str | None = None
    # How many contacts this owner gets relative to the others.
    weight: int = 0


# One person per role so a newcomer can log in as each and see what the role allows, plus
# sales reps who own most contacts so the per-owner summary has several sections.
DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("maria.manager", "Maria", "Keller", MANAGERS_GROUP, EMEA, weight=2),
    DemoUser("sam.staff", "Sam", "Okafor", STAFF_GROUP),
    DemoUser("sofia.support", "Sofia", "Lindqvist", SUPPORT_GROUP),
    DemoUser("lena.weber", "Lena", "Weber", STAFF_GROUP, EMEA, weight=3),
    DemoUser("james.carter", "James", "Carter", STAFF_GROUP, AMERICAS, weight=3),
    DemoUser("lucia.alvarez", "Lucía", "Álvarez", MANAGERS_GROUP, AMERICAS, weight=3),
)

FIRST_NAMES = (
    "Anna", "Ben", "Carla", "David", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas",
    "Katrin", "Lars", "Mila", "Noah", "Olivia", "Paul", "Quentin", "Rosa", "Stefan", "Tanja",
    "Ulrich", "Valentina", "William", "Yasmin", "Zoe", "Ahmed", "Beatriz", "Chloé", "Dmitri",
    "Emma", "François", "Giulia", "Hannah", "Isabel", "Jakub", "Karim", "Laura", "Marco",
    "Nadia", "Oscar", "Priya", "Rafael", "Sophie", "Thomas", "Amelia", "Daniel", "Emily",
    "Ethan", "Grace", "Jacob", "Jessica", "Liam", "Madison", "Michael", "Natalie", "Ryan",
    "Samantha", "Tyler", "Camila", "Diego", "Gabriel", "Mariana", "Mateo", "Sebastián",
    "Valeria", "João", "Fernanda", "Ana", "Lucas", "Aiko", "Wei", "Arjun", "Fatima", "Omar",
)  # fmt: skip
LAST_NAMES = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Meyer", "Wagner", "Becker", "Hoffmann",
    "Dubois", "Laurent", "Moreau", "Rossi", "Russo", "Bianchi", "García", "Fernández",
    "López", "Martínez", "Jansen", "de Vries", "Nowak", "Kowalski", "Andersson", "Johansson",
    "Nielsen", "Hansen", "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis",
    "Wilson", "Anderson", "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson",
    "White", "Harris", "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen", "King",
    "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell",
    "Silva", "Santos", "Oliveira", "Pereira", "Costa", "Gómez", "Ramírez", "Torres", "Flores",
    "O'Brien", "Murphy", "Kelly", "Novak", "Horvat", "Popescu", "Papadopoulos", "Yilmaz",
)  # fmt: skip
# (company, domain): every domain is under .example, which the demo's simulated internet answers
# for and which can never reach a real mailbox (RFC 2606).
COMPANIES = {
    EMEA: (
        ("Nordwind Logistik GmbH", "nordwind-logistik.example"),
        ("Alpenblick Hotels AG", "alpenblick-hotels.example"),
        ("Brightwater Analytics Ltd", "brightwater-analytics.example"),
        ("Château Mercier SA", "chateau-mercier.example"),
        ("Fjordline Shipping AS", "fjordline.example"),
        ("Grünfeld Energie GmbH", "gruenfeld-energie.example"),
        ("Helios Solar BV", "helios-solar.example"),
        ("Iberia Foods SL", "iberia-foods.example"),
        ("Kestrel Security plc", "kestrel-security.example"),
        ("Lumen Medical Srl", "lumen-medical.example"),
        ("Meridian Insurance Ltd", "meridian-insurance.example"),
        ("Oakridge Consulting LLP", "oakridge-consulting.example"),
        ("Polaris Telecom AB", "polaris-telecom.example"),
        ("Rheinland Maschinenbau KG", "rheinland-maschinen.example"),
        ("Sapphire Retail Group", "sapphire-retail.example"),
        ("Vistula Software sp. z o.o.", "vistula-software.example"),
        ("Zenith Pharma NV", "zenith-pharma.example"),
        ("Atlas Freight Europe", "atlas-freight.example"),
    ),
    AMERICAS: (
        ("Acme Corp", "acme-corp.example"),
        ("Bluebird Financial Inc.", "bluebird-financial.example"),
        ("Cascade Outdoor Co.", "cascade-outdoor.example"),
        ("Desert Rose Health", "desertrose-health.example"),
        ("Evergreen Realty LLC", "evergreen-realty.example"),
        ("Frontier Robotics", "frontier-robotics.example"),
        ("Golden Gate Media", "goldengate-media.example"),
        ("Hudson Data Systems", "hudson-data.example"),
        ("Lakeshore Manufacturing", "lakeshore-mfg.example"),
        ("Maple Leaf Airlines", "mapleleaf-air.example"),
        ("Pacífico Alimentos SA de CV", "pacifico-alimentos.example"),
        ("Pampa Agro SA", "pampa-agro.example"),
        ("Redwood Biotech", "redwood-biotech.example"),
        ("Summit Education Partners", "summit-education.example"),
        ("Tropicana Resorts", "tropicana-resorts.example"),
        ("Rio Verde Energia Ltda", "rioverde-energia.example"),
        ("Union Square Apparel", "unionsquare-apparel.example"),
        ("Yellowstone Insurance", "yellowstone-insurance.example"),
    ),
}
# Some contacts give a personal address although they work for a company.
PERSONAL_DOMAINS = ("mailbox.example", "webpost.example", "inbox.example")

INVALID_REASONS = (
    "550 5.1.1 User unknown",
    "550 5.1.1 <{email}>: Recipient address rejected: User unknown in virtual mailbox table",
    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    "551 5.1.1 No such user here",
    "550 5.1.2 Host or domain name not found",
)

# Shares of the contact set; each is at least one contact, so even a small demo shows every kind
# of flag. The flagged groups do not overlap, so each lands on exactly one filter reason in a run.
SHARE_UNSUBSCRIBED = 0.03
SHARE_DO_NOT_EMAIL = 0.02
SHARE_DO_NOT_MASS_EMAIL = 0.02
SHARE_INVALID = 0.02
SHARE_NO_EMAIL = 0.01
SHARE_COMPLAINED = 0.005
SHARE_NO_NEWSLETTER = 0.03
SHARE_NO_EVENTS = 0.01


@dataclass
class DemoSummary:
    password: str
    password_generated: bool
    users: list[tuple[str, str]] = field(default_factory=list)  # (username, group)
    contacts_created: int = 0
    contacts: dict[str, int] = field(default_factory=dict)
    lists: dict[str, int] = field(default_factory=dict)
    accounts: list[str] = field(default_factory=list)
    campaigns: dict[str, int] = field(default_factory=dict)  # name -> number of steps
    runs: list[str] = field(default_factory=list)  # one line per demo run sent
    admin_username: str = ADMIN_USERNAME


def demo_load(
    *,
    contacts: int = 3000,
    seed: int = 7,
    password: str | None = None,
    smtp_port: int = 2525,
    send: bool = True,
    bounce_maildir: str = "var/bounces",
) -> DemoSummary:
    """Migrate, set up the roles, load the demo data set and send demo runs through the
    simulated internet. Safe to run again."""
    call_command("migrate", interactive=False, verbosity=0)
    # Swallow its output: the demo prints one summary of its own.
    call_command("setup_roles", stdout=StringIO())

    password_generated = password is None
    password = password or secrets.token_urlsafe(12)

    # One transaction: an interrupted load leaves nothing behind, so the "contacts already
    # loaded" check of the next run can trust what it finds.
    with transaction.atomic():
        users = demo_users_ensure(password=password)
        topics = demo_topics_ensure()
        lists = demo_lists_ensure()
        created = demo_contacts_load(
            count=contacts,
            seed=seed,
            owners=[users[u.username] for u in DEMO_USERS if u.weight],
            topics=topics,
            lists=lists,
        )
        accounts = demo_accounts_ensure(smtp_port=smtp_port)
        demo_campaigns_ensure(users=users, topics=topics, lists=lists, accounts=accounts)

    runs = demo_runs_send(smtp_port=smtp_port, bounce_maildir=bounce_maildir) if send else []

    return DemoSummary(
        runs=runs,
        password=password,
        password_generated=password_generated,
        users=[(u.username, u.group) for u in DEMO_USERS],
        contacts_created=created,
        contacts=demo_contact_counts(),
        lists=dict(
            ContactList.objects.filter(name__in=lists)
            .annotate(n=Count("contacts"))
            .values_list("name", "n")
        ),
        accounts=sorted(accounts),
        campaigns=dict(
            Campaign.objects.filter(name__in=[c["name"] for c in DEMO_CAMPAIGNS])
            .annotate(n=Count("steps"))
            .values_list("name", "n")
        ),
    )


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def demo_runs_send(*, smtp_port: int, bounce_maildir: str) -> list[str]:
    """Real runs through the simulated internet, so every page has real figures: the
    newsletter completed, the product launch running with follow-ups due, the webinar
    invitation paused part-way; then the bounces that the simulated internet wrote to its
    Maildir for mail it had accepted are read, as `process_bounces --maildir` reads them. Only
    once: campaigns that already ran are left alone."""
    from campaigns.models import CampaignRun
    from campaigns.services import campaign_launch, campaign_pause, dispatch_due, run_prepare
    from campaigns.simulator import SimulatedInternet, SimulatorServer
    from tracking.bounces import bounces_process, maildir_messages

    names = ["Customer newsletter November", "Webinar invitation", "Spring product launch"]
    if CampaignRun.objects.filter(campaign__name__in=names).exists():
        return []
    simulator = None
    if not _listening(smtp_port):
        handler = SimulatedInternet(spread=True, bounce_maildir=bounce_maildir, keep=False)
        simulator = SimulatorServer(handler, port=smtp_port).__enter__()
    lines = []
    try:
        for name in names:
            campaign = Campaign.objects.get(name=name)
            run = run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))
            if name == "Webinar invitation":
                dispatch_due(max_messages=max(1, run.total_recipients // 3))
                campaign_pause(campaign=campaign)
            elif name == "Customer newsletter November":
                dispatch_due()
                # History: this run went out four days ago, so its soft bounces have been
                # retried until they were given up, and the run is complete.
                _demo_age_run(run, timedelta(days=4))
                dispatch_due()
            else:
                # The accounts' per-minute limits end this pass; the workers go on after.
                while dispatch_due().claimed:
                    pass
            run.refresh_from_db()
            sent = run.messages.exclude(status__in=["queued", "sending"]).count()
            lines.append(
                f"{name}: run #{run.pk} {run.get_status_display().lower()}, "
                f"{sent} of {run.total_recipients - run.total_filtered} emails out, "
                f"{run.total_filtered} contacts filtered"
            )
        # The servers wrote their bounces before they answered 250: all of them are there.
        report = bounces_process(messages=maildir_messages(bounce_maildir))
        if report.messages:
            lines.append(
                f"Bounces of accepted mail, read from {bounce_maildir}: {report.messages}, "
                f"{report.bounced_hard} of them hard (the contact marked invalid)"
            )
    finally:
        if simulator is not None:
            simulator.__exit__(None, None, None)
    return lines


def _demo_age_run(run, age: timedelta) -> None:
    """Move a demo run's history back in time (demo data only)."""
    from django.db.models import F

    from campaigns.models import CampaignRun, Message
    from tracking.models import TrackingEvent

    shift = {
        f: F(f) - age
        for f in ("created", "claimed_at", "sent_at", "status_changed_at", "delivered_at")
    }
    Message.objects.filter(run=run).update(**shift)
    Message.objects.filter(run=run, status=Message.Status.SOFT_BOUNCED).update(
        next_attempt_at=timezone.now()
    )
    TrackingEvent.objects.filter(message__run=run).update(occurred_at=F("occurred_at") - age)
    CampaignRun.objects.filter(pk=run.pk).update(started_at=F("started_at") - age)


def demo_users_ensure(*, password: str) -> dict[str, AbstractUser]:
    """The admin superuser and one user per demo person, all with the same password."""
    User = get_user_model()
    # Hash once: PBKDF2 at full strength takes a noticeable fraction of a second per call.
    hashed = make_password(password)

    admin, _ = User.objects.get_or_create(
        username=ADMIN_USERNAME, defaults={"email": "admin@leadcenter.example"}
    )
    admin.is_staff = admin.is_superuser = admin.is_active = True
    admin.password = hashed
    admin.save()

    groups = {g.name: g for g in Group.objects.filter(name__in={u.group for u in DEMO_USERS})}
    missing = {u.group for u in DEMO_USERS} - set(groups)
    if missing:
        raise RuntimeError(f"setup_roles did not create the groups {sorted(missing)}")

    users: dict[str, AbstractUser] = {ADMIN_USERNAME: admin}
    for spec in DEMO_USERS:
        user, _ = User.objects.get_or_create(
            username=spec.username,
            defaults={
                "first_name": spec.first_name,
                "last_name": spec.last_name,
                "email": f"{spec.username}@leadcenter.example",
            },
        )
        user.is_staff = user.is_active = True
        user.password = hashed
        user.save()
        user.groups.add(groups[spec.group])
        users[spec.username] = user
    return users


def demo_topics_ensure() -> dict[str, Topic]:
    descriptions = {
        TOPIC_NEWSLETTER: "The monthly customer newsletter.",
        TOPIC_EVENTS: "Invitations to webinars, trade fairs and meet-ups.",
        TOPIC_PRODUCT_UPDATES: "Launches and release notes.",
    }
    return {
        name: Topic.objects.get_or_create(name=name, defaults={"description": text})[0]
        for name, text in descriptions.items()
    }


def demo_lists_ensure() -> dict[str, ContactList]:
    descriptions = {
        LIST_EMEA: "Prospects in Europe, the Middle East and Africa.",
        LIST_AMERICAS: "Prospects in North and South America.",
        LIST_WEBINAR: "Registered for or attended one of our webinars.",
        LIST_CUSTOMERS: "Paying customers.",
    }
    return {
        name: ContactList.objects.get_or_create(name=name, defaults={"description": text})[0]
        for name, text in descriptions.items()
    }


def _ascii_slug(text: str) -> str:
    """'Lucía de Vries' -> 'luciadevries': the part of a name that goes into an address."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum())


def _pick_disjoint(
    rng: random.Random, indexes: list[int], shares: Sequence[float]
) -> list[set[int]]:
    """Draw one non-overlapping group of indexes per share, each at least one index long."""
    pool = list(indexes)
    rng.shuffle(pool)
    groups: list[set[int]] = []
    start = 0
    for share in shares:
        size = max(1, round(len(indexes) * share)) if indexes else 0
        groups.append(set(pool[start : start + size]))
        start += size
    return groups


def demo_contacts_load(
    *,
    count: int,
    seed: int,
    owners: Sequence[AbstractUser],
    topics: dict[str, Topic],
    lists: dict[str, ContactList],
) -> int:
    """Bulk-load `count` contacts unless demo contacts are already there; returns how many."""
    if count <= 0 or Contact.objects.filter(owner__in=owners).exists():
        return 0

    rng = random.Random(seed)
    now = timezone.now()
    regions = {u.username: u.region for u in DEMO_USERS}
    weights = {u.username: u.weight for u in DEMO_USERS}
    # Addresses someone already has (an imported contact, an earlier partial demo) are skipped
    # rather than tripping contact_email_ci_unique.
    # Only .example addresses can collide with generated ones.
    taken: set[str] = set(
        Contact.objects.filter(email__iendswith=".example").values_list(Lower("email"), flat=True)
    )

    contacts: list[Contact] = []
    for _ in range(count):
        owner = rng.choices(owners, weights=[weights[o.username] for o in owners])[0]
        company, domain = rng.choice(COMPANIES[regions[owner.username] or EMEA])
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        if rng.random() < 0.08:
            domain = rng.choice(PERSONAL_DOMAINS)
        email = _unique_email(rng, first, last, domain, taken)
        contacts.append(
            Contact(
                email=email,
                first_name=first,
                last_name=last,
                company=company,
                owner=owner,
                **_stage_fields(rng, now),
            )
        )

    indexes = list(range(len(contacts)))
    (
        unsubscribed,
        do_not_email,
        do_not_mass_email,
        invalid,
        no_email,
        complained,
        no_newsletter,
        no_events,
    ) = _pick_disjoint(
        rng,
        indexes,
        [
            SHARE_UNSUBSCRIBED,
            SHARE_DO_NOT_EMAIL,
            SHARE_DO_NOT_MASS_EMAIL,
            SHARE_INVALID,
            SHARE_NO_EMAIL,
            SHARE_COMPLAINED,
            SHARE_NO_NEWSLETTER,
            SHARE_NO_EVENTS,
        ],
    )

    suppressions: list[Suppression] = []
    for i in unsubscribed:
        contacts[i].unsubscribed_at = _days_ago(rng, now, 1, 300)
        suppressions.append(
            Suppression(
                email=contacts[i].email.lower(),
                reason=Suppression.Reason.UNSUBSCRIBE,
                source="unsubscribe",
            )
        )
    for i in do_not_email:
        contacts[i].do_not_email = True
    for i in do_not_mass_email:
        contacts[i].do_not_mass_email = True
    for i in invalid:
        contact = contacts[i]
        contact.email_status = Contact.EmailStatus.INVALID
        contact.invalid_reason = rng.choice(INVALID_REASONS).format(email=contact.email)
        contact.invalid_at = _days_ago(rng, now, 1, 300)
        suppressions.append(
            Suppression(
                email=contact.email.lower(),
                reason=Suppression.Reason.HARD_BOUNCE,
                source=rng.choice(("smtp", "dsn")),
                note=contact.invalid_reason,
            )
        )
    for i in no_email:
        contacts[i].email = ""
    # A spam complaint suppresses the address without touching the contact's own flags: these
    # show up as "blocked" in a run.
    for i in complained:
        suppressions.append(
            Suppression(
                email=contacts[i].email.lower(),
                reason=Suppression.Reason.COMPLAINT,
                source="arf",
                note="Marked a previous campaign as spam.",
            )
        )

    # Returned primary keys (PostgreSQL, SQLite >= 3.35) let the M2M rows be built without
    # reading the contacts back.
    Contact.objects.bulk_create(contacts, batch_size=500)
    Suppression.objects.bulk_create(suppressions, batch_size=500, ignore_conflicts=True)

    ListLink = Contact.lists.through
    TopicLink = Contact.opted_out_topics.through
    list_links: list[ListLink] = []
    for contact in contacts:
        for contact_list in _lists_for(rng, contact, regions[contact.owner.username], lists):
            list_links.append(ListLink(contact_id=contact.pk, contactlist_id=contact_list.pk))
    topic_links = [
        TopicLink(contact_id=contacts[i].pk, topic_id=topics[TOPIC_NEWSLETTER].pk)
        for i in sorted(no_newsletter)
    ] + [
        TopicLink(contact_id=contacts[i].pk, topic_id=topics[TOPIC_EVENTS].pk)
        for i in sorted(no_events)
    ]
    ListLink.objects.bulk_create(list_links, batch_size=1000)
    TopicLink.objects.bulk_create(topic_links, batch_size=1000)
    return len(contacts)


def _unique_email(rng: random.Random, first: str, last: str, domain: str, taken: set[str]) -> str:
    f, la = _ascii_slug(first), _ascii_slug(last)
    # The usual corporate patterns, then a number as people get when their name is taken.
    candidates = [f"{f}.{la}", f"{f[0]}{la}", f"{f}{la[0]}", f"{f}_{la}", f"{la}.{f}"]
    rng.shuffle(candidates)
    candidates.insert(0, f"{f}.{la}")
    n = 2
    while True:
        for local in candidates:
            email = f"{local}@{domain}"
            if email not in taken:
                taken.add(email)
                return email
        candidates = [f"{f}.{la}{n}"]
        n += 1


def _days_ago(rng: random.Random, now: datetime, low: int, high: int) -> datetime:
    return now - timedelta(days=rng.randint(low, high), minutes=rng.randint(0, 24 * 60))


def _stage_fields(rng: random.Random, now: datetime) -> dict[str, object]:
    roll = rng.random()
    if roll < 0.75:
        return {"stage": Contact.Stage.SUBSCRIBER}
    lead_at = _days_ago(rng, now, 20, 400)
    if roll < 0.87:
        return {"stage": Contact.Stage.LEAD, "lead_at": lead_at}
    opportunity_at = lead_at + timedelta(days=rng.randint(3, 19))
    stage = Contact.Stage.OPPORTUNITY if roll < 0.93 else Contact.Stage.CUSTOMER
    return {"stage": stage, "lead_at": lead_at, "opportunity_at": opportunity_at}


def _lists_for(
    rng: random.Random, contact: Contact, region: str | None, lists: dict[str, ContactList]
) -> Iterable[ContactList]:
    if contact.stage == Contact.Stage.CUSTOMER:
        yield lists[LIST_CUSTOMERS]
    elif rng.random() < 0.95:  # the rest sit in no list, as imported contacts often do
        yield lists[LIST_AMERICAS if region == AMERICAS else LIST_EMEA]
    if rng.random() < 0.15:
        yield lists[LIST_WEBINAR]


def demo_accounts_ensure(*, smtp_port: int) -> dict[str, SendingAccount]:
    specs = (
        (ACCOUNT_EU, "sales-eu@leadcenter.example", "LeadCenter Sales Europe", 2000,
         "Europe/Berlin"),
        (ACCOUNT_US, "sales-us@leadcenter.example", "LeadCenter Sales Americas", 1500,
         "America/New_York"),
    )  # fmt: skip
    accounts: dict[str, SendingAccount] = {}
    for name, from_email, from_name, daily_limit, tz in specs:
        account, created = SendingAccount.objects.get_or_create(
            name=name,
            defaults={
                "from_email": from_email,
                "from_name": from_name,
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp_port,
                "smtp_security": SendingAccount.Security.NONE,
                "return_path": "bounces@leadcenter.example",
                "daily_limit": daily_limit,
                "per_minute_limit": 600,
                "active_from": None,
                "active_until": None,
                "active_weekdays": "1234567",
                "timezone": tz,
            },
        )
        # Other edits made in the admin are kept; the port follows the option because the
        # simulator may have been started on another one.
        if not created and account.smtp_port != smtp_port:
            account.smtp_port = smtp_port
            account.save(update_fields=["smtp_port"])
        accounts[name] = account
    return accounts


_FOOTER_HTML = (
    '<p style="color:#888;font-size:12px">LeadCenter Inc. · 1 Example Plaza · '
    "You receive this because {{ contact.company|default:'you' }} signed up for our news.</p>"
)
_FOOTER_TEXT = (
    "--\nLeadCenter Inc. · 1 Example Plaza\n"
    "You receive this because {{ contact.company|default:'you' }} signed up for our news."
)

DEMO_CAMPAIGNS: tuple[dict, ...] = (
    {
        "name": "Spring product launch",
        "owner": "maria.manager",
        "topic": TOPIC_PRODUCT_UPDATES,
        "lists": (LIST_EMEA, LIST_AMERICAS),
        "accounts": (ACCOUNT_EU, ACCOUNT_US),
        "steps": (
            (
                timedelta(0),
                "{{ contact.first_name|default:'Hello' }}, meet LeadCenter Spring",
                "<p>Hi {{ contact.first_name|default:'there' }},</p>"
                "<p>Today we launch <strong>LeadCenter Spring</strong>: campaign reports per "
                "record owner, follow-ups that stop on reply, and Excel exports in one click.</p>"
                '<p><a href="https://leadcenter.example/spring">See what is new</a> or '
                '<a href="https://leadcenter.example/demo">book a 20-minute demo</a>: the '
                "team at {{ contact.company|default:'your company' }} is welcome to join.</p>"
                "<p>Best regards,<br>Maria Keller</p>" + _FOOTER_HTML,
                "Hi {{ contact.first_name|default:'there' }},\n\n"
                "Today we launch LeadCenter Spring: campaign reports per record owner, follow-ups "
                "that stop on reply, and Excel exports in one click.\n\n"
                "See what is new: https://leadcenter.example/spring\n"
                "Book a 20-minute demo: https://leadcenter.example/demo\n\n"
                "Best regards,\nMaria Keller\n\n" + _FOOTER_TEXT,
            ),
            (
                timedelta(days=3),
                "Re: {{ contact.first_name|default:'Hello' }}, meet LeadCenter Spring",
                "<p>Hi {{ contact.first_name|default:'there' }},</p>"
                "<p>Just checking you saw my note about LeadCenter Spring. Teams like "
                "{{ contact.company|default:'yours' }} usually start with the "
                '<a href="https://leadcenter.example/spring/reports">owner reports</a>.</p>'
                "<p>Worth a short call this week?</p><p>Maria</p>" + _FOOTER_HTML,
                "Hi {{ contact.first_name|default:'there' }},\n\n"
                "Just checking you saw my note about LeadCenter Spring. Teams like "
                "{{ contact.company|default:'yours' }} usually start with the owner reports:\n"
                "https://leadcenter.example/spring/reports\n\n"
                "Worth a short call this week?\n\nMaria\n\n" + _FOOTER_TEXT,
            ),
        ),
    },
    {
        "name": "Webinar invitation",
        "owner": "lucia.alvarez",
        "topic": TOPIC_EVENTS,
        "lists": (LIST_WEBINAR,),
        "accounts": (ACCOUNT_US,),
        "steps": (
            (
                timedelta(0),
                "Webinar: clean lists, better delivery (Thursday, 5 pm CET)",
                "<p>Hello {{ contact.first_name|default:'there' }},</p>"
                "<p>Join our 45-minute webinar on keeping contact lists clean: hard and soft "
                "bounces, suppression lists and one-click unsubscribe.</p>"
                '<p><a href="https://leadcenter.example/webinars/clean-lists">Save your seat</a>'
                "</p><p>Lucía Álvarez</p>" + _FOOTER_HTML,
                "Hello {{ contact.first_name|default:'there' }},\n\n"
                "Join our 45-minute webinar on keeping contact lists clean: hard and soft "
                "bounces, suppression lists and one-click unsubscribe.\n\n"
                "Save your seat: https://leadcenter.example/webinars/clean-lists\n\n"
                "Lucía Álvarez\n\n" + _FOOTER_TEXT,
            ),
            (
                timedelta(days=2),
                "Reminder: webinar on Thursday",
                "<p>Hi {{ contact.first_name|default:'there' }}, a quick reminder that our "
                "webinar on clean lists is this Thursday. "
                '<a href="https://leadcenter.example/webinars/clean-lists">Register here</a>.</p>'
                + _FOOTER_HTML,
                "Hi {{ contact.first_name|default:'there' }}, a quick reminder that our webinar "
                "on clean lists is this Thursday.\n"
                "Register here: https://leadcenter.example/webinars/clean-lists\n\n" + _FOOTER_TEXT,
            ),
            (
                timedelta(days=2),
                "Last chance: the recording and slides",
                "<p>Hi {{ contact.first_name|default:'there' }},</p><p>Missed it? The "
                '<a href="https://leadcenter.example/webinars/clean-lists/recording">recording'
                '</a> and <a href="https://leadcenter.example/webinars/clean-lists/slides">'
                "slides</a> are online for one more week.</p>" + _FOOTER_HTML,
                "Hi {{ contact.first_name|default:'there' }},\n\nMissed it? The recording and "
                "slides are online for one more week:\n"
                "https://leadcenter.example/webinars/clean-lists/recording\n"
                "https://leadcenter.example/webinars/clean-lists/slides\n\n" + _FOOTER_TEXT,
            ),
        ),
    },
    {
        "name": "Customer newsletter November",
        "owner": "maria.manager",
        "topic": TOPIC_NEWSLETTER,
        "lists": (LIST_CUSTOMERS,),
        "accounts": (ACCOUNT_EU,),
        "steps": (
            (
                timedelta(0),
                "November at LeadCenter: faster exports and a new delivery dashboard",
                "<h1>November news</h1>"
                "<p>Dear {{ contact.first_name|default:'customer' }},</p>"
                "<ul><li>Excel exports now stream, so a million rows take seconds.</li>"
                "<li>The new delivery dashboard shows the funnel per sending account.</li></ul>"
                '<p><a href="https://leadcenter.example/blog/november">Read the full update</a>'
                "</p>" + _FOOTER_HTML,
                "November news\n\nDear {{ contact.first_name|default:'customer' }},\n\n"
                "* Excel exports now stream, so a million rows take seconds.\n"
                "* The new delivery dashboard shows the funnel per sending account.\n\n"
                "Read the full update: https://leadcenter.example/blog/november\n\n" + _FOOTER_TEXT,
            ),
        ),
    },
)


def demo_campaigns_ensure(
    *,
    users: dict[str, AbstractUser],
    topics: dict[str, Topic],
    lists: dict[str, ContactList],
    accounts: dict[str, SendingAccount],
) -> dict[str, Campaign]:
    """Draft campaigns with their steps; an existing campaign is left as the user edited it."""
    campaigns: dict[str, Campaign] = {}
    for spec in DEMO_CAMPAIGNS:
        campaign, created = Campaign.objects.get_or_create(
            name=spec["name"],
            defaults={
                "owner": users[spec["owner"]],
                "topic": topics[spec["topic"]],
                "track_opens": True,
                "track_clicks": True,
                "state": Campaign.State.DRAFT,
            },
        )
        if created:
            campaign.lists.set([lists[name] for name in spec["lists"]])
            campaign.accounts.set([accounts[name] for name in spec["accounts"]])
        if not campaign.steps.exists():
            CampaignStep.objects.bulk_create(
                CampaignStep(
                    campaign=campaign,
                    position=position,
                    delay=delay,
                    subject=subject,
                    html_body=html,
                    text_body=text,
                )
                for position, (delay, subject, html, text) in enumerate(spec["steps"], start=1)
            )
        campaigns[campaign.name] = campaign
    return campaigns


def demo_contact_counts() -> dict[str, int]:
    """Contacts per consent flag and stage, in one query."""
    counts = Contact.objects.aggregate(
        total=Count("pk"),
        no_email=Count("pk", filter=Q(email="")),
        unsubscribed=Count("pk", filter=Q(unsubscribed_at__isnull=False)),
        do_not_email=Count("pk", filter=Q(do_not_email=True)),
        do_not_mass_email=Count("pk", filter=Q(do_not_mass_email=True)),
        invalid=Count("pk", filter=Q(email_status=Contact.EmailStatus.INVALID)),
        leads=Count("pk", filter=Q(stage=Contact.Stage.LEAD)),
        opportunities=Count("pk", filter=Q(stage=Contact.Stage.OPPORTUNITY)),
        customers=Count("pk", filter=Q(stage=Contact.Stage.CUSTOMER)),
    )
    counts["opted_out_of_a_topic"] = (
        Contact.opted_out_topics.through.objects.values("contact_id").distinct().count()
    )
    counts["suppressed"] = Suppression.objects.filter(lifted_at__isnull=True).count()
    return counts
