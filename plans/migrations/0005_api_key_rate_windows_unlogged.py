import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("plans", "0004_currency_choices_from_settings"),
    ]

    operations = [
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
        ),
        # Counts that live seconds need no WAL: a write skips the log (and its flush at
        # commit), and a crash merely empties the table, resetting every limit early.
        migrations.RunSQL(
            "ALTER TABLE plans_apikeyratewindow SET UNLOGGED",
            reverse_sql="ALTER TABLE plans_apikeyratewindow SET LOGGED",
        ),
    ]
