from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

# The roles of staff/0003_roles.py: every role sees the webhook log; billing admins
# manage endpoints (and so see their secrets) and replay deliveries.
ALL_ROLES = ("Billing admin", "Support", "Finance")
EXTRA: dict[str, list[str]] = {
    "Billing admin": [
        "add_webhookendpoint",
        "change_webhookendpoint",
        "replay_delivery",
    ],
}


def grant(apps: Any, schema_editor: Any) -> None:
    # Permissions are normally created after all migrations ran; the groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    views = Permission.objects.filter(
        content_type__app_label="outbound", codename__startswith="view_"
    )
    for group in Group.objects.filter(name__in=ALL_ROLES):
        extra = Permission.objects.filter(
            content_type__app_label="outbound", codename__in=EXTRA.get(group.name, [])
        )
        group.permissions.add(*views, *extra)


def revoke(apps: Any, schema_editor: Any) -> None:
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ours = Permission.objects.filter(content_type__app_label="outbound")
    for group in Group.objects.filter(name__in=ALL_ROLES):
        group.permissions.remove(*ours)


class Migration(migrations.Migration):
    dependencies = [
        ("outbound", "0001_initial"),
        ("staff", "0003_roles"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
