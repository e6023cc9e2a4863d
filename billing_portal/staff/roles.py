"""The staff roles: groups of Django permissions, kept in existence by ``migrate``.

The migrations that introduced them (staff 0003 and 0004, outbound 0002) keep their own
frozen copies; this is the current definition. :func:`roles_ensure` runs after every
``migrate`` and ``flush`` (the ``post_migrate`` signal), so a role deleted by mistake, or
emptied by a flush, comes back with what it needs. It only adds: a permission an operator
gave a role on purpose stays.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import DEFAULT_DB_ALIAS

# Every role sees every model the admin shows; these apps' "view_" permissions.
VIEWED_APPS = ("ledger", "plans", "metering", "invoicing", "staff", "outbound")

WORKFLOWS: dict[str, dict[str, list[str]]] = {
    "Billing admin": {
        "staff": [
            "grant_credits",
            "grant_promotional_credits",
            "exceed_grant_daily_limit",
            "void_grant",
            "correct_usage",
            "issue_credit_note",
            "change_plan",
            "retry_sync",
            "manage_api_keys",
            "edit_catalog",
            "read_reports",
        ],
        # Manages webhook endpoints (and so sees their secrets) and replays deliveries.
        "outbound": ["add_webhookendpoint", "change_webhookendpoint", "replay_delivery"],
    },
    # Support helps customers: small goodwill credits, usage fixes; never money.
    "Support": {"staff": ["grant_promotional_credits", "void_grant", "correct_usage"]},
    "Finance": {"staff": ["issue_credit_note", "retry_sync", "read_reports"]},
}


def roles_ensure(*, using: str = DEFAULT_DB_ALIAS, apps: Any = global_apps) -> None:
    """Create any missing role and give each role any permission it lacks."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    # Permissions are created app by app as post_migrate reaches each; the roles name
    # permissions of apps that may come later in that order.
    # As Django's own post_migrate handler calls it: the installed app, the models of
    # ``apps`` (the migrated state during ``migrate``).
    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=using, apps=apps)
    permissions = Permission.objects.using(using)
    views = list(
        permissions.filter(content_type__app_label__in=VIEWED_APPS, codename__startswith="view_")
    )
    for name, workflows in WORKFLOWS.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        workflow = [
            permission
            for app_label, codenames in workflows.items()
            for permission in permissions.filter(
                content_type__app_label=app_label, codename__in=codenames
            )
        ]
        group.permissions.add(*views, *workflow)


def roles_after_migrate(sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    roles_ensure(using=using, apps=kwargs.get("apps") or global_apps)
