# Built concurrently: on a large table of ratings a plain CREATE INDEX would stop rating's
# inserts for as long as it reads the table.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("metering", "0008_event_customer_meter_no_fk"),
        ("plans", "0012_customer_timezone"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="eventrating",
            index=models.Index(
                condition=models.Q(("prior_period_adjustment", True)),
                fields=["period"],
                name="metering_rating_late",
            ),
        ),
    ]
