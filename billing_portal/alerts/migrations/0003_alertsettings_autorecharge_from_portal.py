"""AlertSettings and AutoRecharge move here from the portal, rows and all.

Only Django's idea of where the models live changes: the tables keep their ``portal_``
names (``db_table``) and their constraints and indexes their names, so nothing is done to
the database. ``portal.0004`` then drops them from the portal's state.
"""

import billing_portal.alerts.models
import django.contrib.postgres.fields
import django.db.models.deletion
import djmoney.models.fields
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('alerts', '0002_currency_choices_from_settings'),
        ('plans', '0003_plan_version_alert_defaults'),
        # The models in the state they reached in the portal.
        ('portal', '0003_currency_choices_from_settings'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='AlertSettings',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('usage_thresholds', django.contrib.postgres.fields.ArrayField(base_field=models.PositiveSmallIntegerField(), blank=True, default=billing_portal.alerts.models.default_usage_thresholds, size=None)),
                        ('low_balance_credits', models.DecimalField(blank=True, decimal_places=6, max_digits=20, null=True)),
                        ('recipients', django.contrib.postgres.fields.ArrayField(base_field=models.EmailField(max_length=254), blank=True, default=list, size=None)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('customer', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='portal_alert_settings', to='plans.customer')),
                    ],
                    options={
                        'verbose_name_plural': 'alert settings',
                        'db_table': 'portal_alertsettings',
                        'constraints': [models.CheckConstraint(condition=models.Q(('low_balance_credits__isnull', True), ('low_balance_credits__gte', 0), _connector='OR'), name='portal_low_balance_gte_0')],
                    },
                ),
                migrations.CreateModel(
                    name='AutoRecharge',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('enabled', models.BooleanField(default=False)),
                        ('threshold_credits', models.DecimalField(blank=True, decimal_places=6, max_digits=20, null=True)),
                        ('max_recharges_per_month', models.PositiveSmallIntegerField(default=3)),
                        ('max_amount_per_month_currency', djmoney.models.fields.CurrencyField(choices=[('AUD', 'Australian Dollar'), ('GBP', 'British Pound'), ('CAD', 'Canadian Dollar'), ('EUR', 'Euro'), ('CHF', 'Swiss Franc'), ('USD', 'US Dollar')], default='USD', editable=False, max_length=3, null=True)),
                        ('max_amount_per_month', djmoney.models.fields.MoneyField(blank=True, decimal_places=2, max_digits=14, null=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('customer', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='portal_auto_recharge', to='plans.customer')),
                        ('pack', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='plans.creditpack')),
                    ],
                    options={
                        'db_table': 'portal_autorecharge',
                        'constraints': [models.CheckConstraint(condition=models.Q(('enabled', False), models.Q(('threshold_credits__isnull', False), ('pack__isnull', False)), _connector='OR'), name='portal_auto_recharge_complete_when_enabled'), models.CheckConstraint(condition=models.Q(('threshold_credits__isnull', True), ('threshold_credits__gte', 0), _connector='OR'), name='portal_auto_recharge_threshold_gte_0'), models.CheckConstraint(condition=models.Q(('max_amount_per_month__isnull', True), ('max_amount_per_month__gt', 0), _connector='OR'), name='portal_auto_recharge_max_amount_gt_0')],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
