# Retention of raw events (metering.retention): the mark on a period whose events were
# removed, and the record of each removal that lineage reads.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('metering', '0010_rating_references_no_fk'),
    ]

    operations = [
        migrations.AddField(
            model_name='periodusage',
            name='raw_removed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name='RawEventsRemoval',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('before', models.DateTimeField()),
                ('events', models.BigIntegerField()),
                ('ratings', models.BigIntegerField()),
                ('removed_at', models.DateTimeField()),
            ],
            options={
                'indexes': [models.Index(fields=['-before'], name='metering_removal_before')],
            },
        ),
    ]
