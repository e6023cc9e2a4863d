"""The staff roles survive what empties the groups table: a flush (which every
transactional test runs) or an operator deleting one by mistake; ``migrate`` restores them."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command

from billing_portal.staff.roles import WORKFLOWS, roles_ensure


def _roles() -> dict[str, set[tuple[str, str]]]:
    return {
        group.name: set(group.permissions.values_list("content_type__app_label", "codename"))
        for group in Group.objects.filter(name__in=WORKFLOWS).order_by("name")
    }


@pytest.mark.django_db(transaction=True)
def test_a_flush_leaves_every_role_as_the_migrations_made_it() -> None:
    migrated = _roles()
    assert set(migrated) == {"Billing admin", "Support", "Finance"}

    call_command("flush", interactive=False, verbosity=0)

    assert _roles() == migrated


@pytest.mark.django_db
def test_a_deleted_role_comes_back_and_an_added_permission_stays() -> None:
    migrated = _roles()
    Group.objects.filter(name="Support").delete()
    finance = Group.objects.get(name="Finance")
    extra = Permission.objects.get(content_type__app_label="staff", codename="change_plan")
    finance.permissions.add(extra)

    roles_ensure()

    after = _roles()
    assert after["Support"] == migrated["Support"]
    assert after["Finance"] == migrated["Finance"] | {("staff", "change_plan")}
    assert after["Billing admin"] == migrated["Billing admin"]
