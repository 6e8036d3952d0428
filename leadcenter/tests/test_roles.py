from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from leadcenter.roles import roles_setup

pytestmark = pytest.mark.django_db

STAFF = {
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
}
MANAGERS = STAFF | {
    "campaigns.add_campaign",
    "campaigns.change_campaign",
    "campaigns.add_campaignstep",
    "campaigns.change_campaignstep",
    "campaigns.delete_campaignstep",
    "campaigns.add_sendingaccount",
    "campaigns.change_sendingaccount",
    "contacts.add_contactlist",
    "contacts.change_contactlist",
    "campaigns.launch_campaign",
    "campaigns.export_reports",
}
SUPPORT = {
    "contacts.view_contact",
    "contacts.change_contact",
    "contacts.view_contactlist",
    "contacts.view_topic",
    "contacts.view_suppression",
    "contacts.add_suppression",
    "contacts.change_suppression",
    "campaigns.view_message",
    "campaigns.view_recipient",
    "campaigns.view_campaign",
    "tracking.view_trackingevent",
    "tracking.view_rejection",
}


def permissions_of(group_name: str) -> set[str]:
    group = Group.objects.get(name=group_name)
    return {
        f"{app_label}.{codename}"
        for app_label, codename in group.permissions.values_list(
            "content_type__app_label", "codename"
        )
    }


def test_each_group_has_exactly_its_permissions():
    roles_setup()

    assert permissions_of("Staff") == STAFF
    assert permissions_of("Managers") == MANAGERS
    assert permissions_of("Support") == SUPPORT


def test_it_returns_the_number_of_permissions_per_group():
    assert roles_setup() == {
        "Staff": len(STAFF),
        "Managers": len(MANAGERS),
        "Support": len(SUPPORT),
    }


def test_setup_roles_is_idempotent():
    first = roles_setup()
    before = {name: permissions_of(name) for name in first}

    second = roles_setup()

    assert second == first
    assert {name: permissions_of(name) for name in second} == before
    assert Group.objects.count() == 3


def test_it_takes_away_permissions_granted_by_hand():
    roles_setup()
    staff = Group.objects.get(name="Staff")
    staff.permissions.add(Permission.objects.get(codename="delete_campaign"))

    roles_setup()

    assert permissions_of("Staff") == STAFF


def test_it_fails_loudly_when_a_permission_is_missing():
    Permission.objects.filter(codename="launch_campaign").delete()

    with pytest.raises(ImproperlyConfigured, match=r"campaigns\.launch_campaign"):
        roles_setup()


def test_support_has_no_campaign_control_and_no_export(support_user):
    assert support_user.has_perm("contacts.change_contact")
    assert support_user.has_perm("contacts.change_suppression")
    assert not support_user.has_perm("campaigns.change_campaign")
    assert not support_user.has_perm("campaigns.launch_campaign")
    assert not support_user.has_perm("campaigns.export_reports")


def test_managers_may_launch_and_export_but_staff_may_not(manager_user, staff_user):
    assert manager_user.has_perm("campaigns.launch_campaign")
    assert manager_user.has_perm("campaigns.export_reports")
    assert not staff_user.has_perm("campaigns.launch_campaign")
    assert not staff_user.has_perm("campaigns.export_reports")
    assert not staff_user.has_perm("campaigns.change_campaign")


def test_command_prints_a_line_per_group():
    out = StringIO()

    call_command("setup_roles", stdout=out)

    assert out.getvalue().splitlines() == [
        f"Staff: {len(STAFF)} permissions",
        f"Managers: {len(MANAGERS)} permissions",
        f"Support: {len(SUPPORT)} permissions",
    ]
    assert Group.objects.filter(name__in=["Staff", "Managers", "Support"]).count() == 3


def test_command_refuses_to_run_before_migrate_created_the_permissions():
    Permission.objects.filter(codename="export_reports").delete()

    with pytest.raises(CommandError, match="migrate"):
        call_command("setup_roles", stdout=StringIO())
