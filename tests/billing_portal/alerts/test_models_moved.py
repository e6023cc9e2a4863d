"""AlertSettings and AutoRecharge moved from the portal to alerts: every row, its admin log
entries and the permissions granted on it come along."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from djmoney.money import Money

from billing_portal.alerts.models import AlertSettings, AutoRecharge
from plans.models import CreditPack
from tests.plans.factories import customer, load_demo_catalog

pytestmark = pytest.mark.django_db(transaction=True)

# The last migrations before the move: the models still in the portal.
BEFORE_THE_MOVE = [
    ("alerts", "0002_currency_choices_from_settings"),
    ("portal", "0003_currency_choices_from_settings"),
]


@pytest.fixture
def executor() -> Iterator[MigrationExecutor]:
    executor = MigrationExecutor(connection)
    try:
        yield executor
    finally:
        _migrate_to_latest(executor)


def _migrate_to_latest(executor: MigrationExecutor) -> None:
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    ContentType.objects.clear_cache()


def test_it_keeps_the_rows_of_the_moved_models(executor: MigrationExecutor) -> None:
    load_demo_catalog()
    acme = customer("acme")
    pack = CreditPack.objects.get(code="pack_10k")
    executor.migrate(BEFORE_THE_MOVE)
    old = executor.loader.project_state(BEFORE_THE_MOVE).apps
    old_settings = old.get_model("portal", "AlertSettings")._default_manager.create(
        customer_id=acme.pk,
        usage_thresholds=[60, 90],
        low_balance_credits=Decimal("1234.5"),
        recipients=["ops@acme.test"],
    )
    old_recharge = old.get_model("portal", "AutoRecharge")._default_manager.create(
        customer_id=acme.pk,
        enabled=True,
        threshold_credits=Decimal("5000"),
        pack_id=pack.pk,
        max_recharges_per_month=2,
        max_amount_per_month=Decimal("250.00"),
        max_amount_per_month_currency="EUR",
    )

    _migrate_to_latest(executor)

    settings = AlertSettings.objects.get(pk=old_settings.pk)
    assert settings.customer == acme
    assert settings.usage_thresholds == [60, 90]
    assert settings.low_balance_credits == Decimal("1234.5")
    assert settings.recipients == ["ops@acme.test"]
    recharge = AutoRecharge.objects.get(pk=old_recharge.pk)
    assert (recharge.customer, recharge.enabled, recharge.pack) == (acme, True, pack)
    assert recharge.threshold_credits == Decimal("5000")
    assert recharge.max_recharges_per_month == 2
    assert recharge.max_amount_per_month == Money("250.00", "EUR")
    assert acme.portal_alert_settings == settings
    assert acme.portal_auto_recharge == recharge


def test_it_keeps_their_log_entries_and_permissions(executor: MigrationExecutor) -> None:
    editor = User.objects.create_user("editor", "editor@example.test")
    executor.migrate(BEFORE_THE_MOVE)
    # Before the move the content type is the portal's (the only one there was then).
    content_type = ContentType.objects.get(app_label="portal", model="alertsettings")
    assert not ContentType.objects.filter(app_label="alerts", model="alertsettings").exists()
    entry = LogEntry.objects.create(
        user=editor,
        content_type=content_type,
        object_id="1",
        object_repr="alerts of 1",
        action_flag=CHANGE,
    )
    group = Group.objects.create(name="Alert editors")
    group.permissions.add(*Permission.objects.filter(content_type=content_type))

    _migrate_to_latest(executor)

    assert ContentType.objects.get_for_model(AlertSettings).pk == content_type.pk
    assert ContentType.objects.get_for_model(AutoRecharge).app_label == "alerts"
    assert not ContentType.objects.filter(app_label="portal", model="alertsettings").exists()
    entry.refresh_from_db()
    assert entry.content_type is not None
    assert entry.content_type.model_class() is AlertSettings
    assert sorted(group.permissions.values_list("content_type__app_label", "codename")) == [
        ("alerts", "add_alertsettings"),
        ("alerts", "change_alertsettings"),
        ("alerts", "delete_alertsettings"),
        ("alerts", "view_alertsettings"),
    ]


def test_a_migrated_database_has_nothing_left_to_migrate(executor: MigrationExecutor) -> None:
    executor.loader.build_graph()
    targets = executor.loader.graph.leaf_nodes()
    assert executor.migration_plan(targets) == []
    state = executor.loader.project_state()
    assert state.apps.get_model("alerts", "AlertSettings")._meta.db_table == "portal_alertsettings"
    assert state.apps.get_model("alerts", "AutoRecharge")._meta.db_table == "portal_autorecharge"
    assert ("portal", "alertsettings") not in state.models
    assert ("portal", "autorecharge") not in state.models
