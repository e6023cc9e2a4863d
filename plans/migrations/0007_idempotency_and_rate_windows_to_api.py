"""The HTTP API's tables leave the plans app for billing_portal.api: state only, the
tables stay as they are (see api 0001)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("plans", "0006_customer_metadata"),
        ("api", "0001_idempotency_and_rate_windows_from_plans"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(name="ApiKeyRateWindow"),
                migrations.DeleteModel(name="IdempotencyRecord"),
            ],
        ),
    ]
