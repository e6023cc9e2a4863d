"""The API's own tables, created by the plans app, become this app's: state only, no
database change (the tables keep their names, constraints and indexes)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("plans", "0006_customer_metadata"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="ApiKeyRateWindow",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "api_key",
                                "window_start",
                                blank=True,
                                editable=False,
                                primary_key=True,
                                serialize=False,
                            ),
                        ),
                        ("window_start", models.BigIntegerField(help_text="Unix seconds")),
                        ("count", models.PositiveIntegerField()),
                        (
                            "api_key",
                            models.ForeignKey(
                                db_constraint=False,
                                on_delete=django.db.models.deletion.DO_NOTHING,
                                related_name="+",
                                to="plans.apikey",
                            ),
                        ),
                    ],
                    options={"db_table": "plans_apikeyratewindow"},
                ),
                migrations.CreateModel(
                    name="IdempotencyRecord",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("key", models.CharField(max_length=255)),
                        ("method", models.CharField(max_length=8)),
                        ("path", models.CharField(max_length=512)),
                        ("request_hash", models.CharField(max_length=64)),
                        ("status_code", models.PositiveSmallIntegerField(blank=True, null=True)),
                        ("response_body", models.JSONField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "api_key",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="plans.apikey",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "plans_idempotencyrecord",
                        "indexes": [
                            models.Index(fields=["created_at"], name="plans_idempotency_created")
                        ],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("api_key", "key"), name="plans_idempotency_key"
                            )
                        ],
                    },
                ),
            ],
        ),
    ]
