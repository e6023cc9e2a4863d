"""AlertSettings and AutoRecharge are alerts' models now (``alerts.0003``): they leave the
portal's state only. Their tables, under their ``portal_`` names, and every row stay."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('portal', '0003_currency_choices_from_settings'),
        # Created in alerts' state first, so no state in between lacks the models.
        ('alerts', '0003_alertsettings_autorecharge_from_portal'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name='AlertSettings'),
                migrations.DeleteModel(name='AutoRecharge'),
            ],
            database_operations=[],
        ),
    ]
