from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

PERMISSION = "exceed_grant_daily_limit"
# Billing admins already grant any category and amount; the daily limit is for the roles
# that grant goodwill credits many times a day (Support).
EXEMPT_ROLES = ("Billing admin",)


def exempt_roles(apps: Any, schema_editor: Any) -> None:
    # Permissions are normally created after all migrations ran; the role needs it now.
    app_config = apps.get_app_config("staff")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    permission = Permission.objects.get(content_type__app_label="staff", codename=PERMISSION)
    for group in Group.objects.filter(name__in=EXEMPT_ROLES):
        group.permissions.add(permission)


def unexempt_roles(apps: Any, schema_editor: Any) -> None:
    Permission = apps.get_model("auth", "Permission")
    Permission.objects.filter(content_type__app_label="staff", codename=PERMISSION).delete()


class Migration(migrations.Migration):
    dependencies = [("staff", "0003_roles")]

    operations = [
        migrations.AlterModelOptions(
            name="auditlog",
            options={
                "ordering": ["-created_at", "-pk"],
                "permissions": [
                    ("grant_credits", "Grant credits of any category and amount"),
                    (
                        "grant_promotional_credits",
                        "Grant promotional credits up to the support limit",
                    ),
                    (
                        "exceed_grant_daily_limit",
                        "Grant credits beyond the daily limit per staff user",
                    ),
                    ("void_grant", "Void or expire a credit grant"),
                    ("correct_usage", "Cancel or correct a meter event"),
                    ("issue_credit_note", "Issue or void a credit note"),
                    ("change_plan", "Change a customer's plan"),
                    ("retry_sync", "Retry a failed Stripe sync"),
                    ("manage_api_keys", "Create and revoke API keys"),
                    ("edit_catalog", "Edit plans and rate cards"),
                    ("read_reports", "View revenue, reconciliation and lineage reports"),
                ],
            },
        ),
        migrations.RunPython(exempt_roles, unexempt_roles),
    ]
