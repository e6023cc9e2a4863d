from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

# Which models each role may see: every model the admin shows (staff see everything).
VIEWED_APPS = ("ledger", "plans", "metering", "invoicing", "staff")

ROLES: dict[str, list[str]] = {
    "Billing admin": [
        "grant_credits",
        "grant_promotional_credits",
        "void_grant",
        "correct_usage",
        "issue_credit_note",
        "change_plan",
        "retry_sync",
        "manage_api_keys",
        "edit_catalog",
        "read_reports",
    ],
    # Support helps customers: small goodwill credits, usage fixes; never money.
    "Support": ["grant_promotional_credits", "void_grant", "correct_usage"],
    "Finance": ["issue_credit_note", "retry_sync", "read_reports"],
}


def create_roles(apps: Any, schema_editor: Any) -> None:
    # Permissions are normally created after all migrations ran; the groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    views = Permission.objects.filter(
        content_type__app_label__in=VIEWED_APPS, codename__startswith="view_"
    )
    for name, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        workflow = Permission.objects.filter(
            content_type__app_label="staff", codename__in=codenames
        )
        group.permissions.add(*views, *workflow)


def delete_roles(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("staff", "0002_audit_append_only"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("ledger", "0002_append_only_triggers"),
        ("plans", "0002_customer_spend_limit_credits"),
        ("metering", "0002_event_cancellation"),
        ("invoicing", "0002_purchases_credit_notes_revenue"),
    ]

    operations = [migrations.RunPython(create_roles, delete_roles)]
