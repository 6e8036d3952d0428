"""The Staff, Managers and Support groups of DESIGN.md "Roles", as data.

The admin honours them by itself through Django's model permissions: it hides what a group may
not do and refuses it on the server. `roles_setup()` makes the groups match this module exactly,
so running it again after a change here also takes permissions away.
"""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Q

STAFF = "Staff"
MANAGERS = "Managers"
SUPPORT = "Support"

STAFF_PERMISSIONS: tuple[str, ...] = (
    "campaigns.view_campaign",
    "campaigns.view_campaignstep",
    "campaigns.view_campaignrun",
    "campaigns.view_recipient",
    "campaigns.view_message",
    "campaigns.view_sendingaccount",
    "contacts.view_contact",
    "contacts.view_contactlist",
    "contacts.view_topic",
    "contacts.view_suppression",
    "tracking.view_trackingevent",
    "tracking.view_rejection",
)

MANAGER_PERMISSIONS: tuple[str, ...] = (
    *STAFF_PERMISSIONS,
    "campaigns.add_campaign",
    "campaigns.change_campaign",
    "campaigns.add_campaignstep",
    "campaigns.change_campaignstep",
    "campaigns.delete_campaignstep",
    "campaigns.add_sendingaccount",
    "campaigns.change_sendingaccount",
    "contacts.add_contactlist",
    "contacts.change_contactlist",
    # Declared in Campaign.Meta.permissions.
    "campaigns.launch_campaign",
    "campaigns.export_reports",
)

SUPPORT_PERMISSIONS: tuple[str, ...] = (
    "contacts.view_contact",
    "contacts.change_contact",
    "contacts.view_contactlist",
    "contacts.view_topic",
    "contacts.view_suppression",
    "contacts.add_suppression",
    "contacts.change_suppression",
    "campaigns.view_message",
    "campaigns.view_recipient",
    # So campaign names show and link on the Sent emails page; no campaign control.
    "campaigns.view_campaign",
    "tracking.view_trackingevent",
    "tracking.view_rejection",
)

ROLES: dict[str, tuple[str, ...]] = {
    STAFF: STAFF_PERMISSIONS,
    MANAGERS: MANAGER_PERMISSIONS,
    SUPPORT: SUPPORT_PERMISSIONS,
}


def permissions_lookup(names: tuple[str, ...]) -> list[Permission]:
    """The Permission rows for "app_label.codename" names; refuses to go on if one is missing
    (usually: `migrate` has not run yet, which is what creates them)."""
    pairs = {tuple(name.split(".", 1)) for name in names}
    query = Q()
    for app_label, codename in pairs:
        query |= Q(content_type__app_label=app_label, codename=codename)
    found = {
        (p.content_type.app_label, p.codename): p
        for p in Permission.objects.filter(query).select_related("content_type")
    }
    missing = sorted(f"{a}.{c}" for a, c in pairs - found.keys())
    if missing:
        raise ImproperlyConfigured(
            f"Permissions not found: {', '.join(missing)}. Run `manage.py migrate` first."
        )
    return list(found.values())


@transaction.atomic
def roles_setup() -> dict[str, int]:
    """Create or update each group so it has exactly its permissions; returns their counts."""
    counts: dict[str, int] = {}
    for name, names in ROLES.items():
        permissions = permissions_lookup(names)
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(permissions)
        counts[name] = len(permissions)
    return counts
