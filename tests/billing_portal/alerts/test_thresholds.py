"""Usage thresholds: each fires once per period, however many workers cross it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.db import IntegrityError, connection, transaction

from billing_portal.alerts import selectors
from billing_portal.alerts.models import Alert, AlertKind
from billing_portal.alerts.services import alert_raise, usage_evaluate
from billing_portal.outbound.models import OutboundEvent
from ledger.sql import pipelined
from metering.models import EventRating
from plans import catalog
from plans.models import Customer, SubscriptionPeriod
from tests.billing_portal.alerts.factories import NOW, alert_settings, events_add, fired, rate, use
from tests.billing_portal.portal.factories import member, subscribed_customer
from tests.plans.factories import DEMO_CATALOG, load_demo_catalog

THREADS = 4
DEMO = DEMO_CATALOG.read_text()


def _in_threads(work: Any, count: int = THREADS) -> list[BaseException]:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            work()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_fires_each_threshold_once_when_workers_rate_concurrently() -> None:
    with time_machine.travel(NOW, tick=False):
        load_demo_catalog()
        acme = subscribed_customer("acme")  # pro: 20,000 included credits
        member(acme)
        events_add(acme, 16)  # 24,000 credits: past 50, 80 and 100%

        errors = _in_threads(lambda: rate(acme, batch=1))

    assert errors == []
    assert EventRating.objects.count() == 16
    period = SubscriptionPeriod.objects.get()
    usage = Alert.objects.filter(kind=AlertKind.USAGE_THRESHOLD)
    assert sorted(usage.values_list("period_id", "threshold")) == [
        (period.pk, "100"),
        (period.pk, "50"),
        (period.pk, "80"),
    ]
    assert fired(acme, AlertKind.BALANCE_DEPLETED) == [("balance_depleted", "0")]
    assert len(mail.outbox) == Alert.objects.count() == 4
    assert sorted(m.subject for m in mail.outbox).count("[Acme] Usage alert") == 3
    triggered = OutboundEvent.objects.filter(type="alert.triggered", customer=acme)
    assert triggered.count() == 4
    assert sorted(e.data["threshold"] for e in triggered) == ["0", "100", "50", "80"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_racing_raises_of_one_alert_store_it_once() -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme")
    period = SubscriptionPeriod.objects.get()
    results: list[Alert | None] = []

    def raise_it() -> None:
        with transaction.atomic():
            results.append(
                alert_raise(
                    customer=acme,
                    kind=AlertKind.USAGE_THRESHOLD,
                    threshold="80",
                    period=period,
                    message="80% used",
                    data={},
                )
            )

    assert _in_threads(raise_it) == []
    assert len([r for r in results if r is not None]) == 1
    assert Alert.objects.count() == 1


@pytest.mark.django_db
def test_evaluating_twice_fires_once(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme")
    use(acme, 11)  # 16,500 of 20,000: 82.5%
    period = SubscriptionPeriod.objects.get()
    assert fired(acme) == [("usage_threshold", "50"), ("usage_threshold", "80")]

    usage_evaluate(customer=acme, period_ids={period.pk})
    usage_evaluate(customer=acme, period_ids={period.pk})

    assert fired(acme) == [("usage_threshold", "50"), ("usage_threshold", "80")]


@pytest.mark.django_db
def test_it_uses_the_customers_own_thresholds(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme")
    alert_settings(acme, usage_thresholds=[25, 75])
    use(acme, 4)  # 6,000 of 20,000: 30%
    assert fired(acme) == [("usage_threshold", "25")]


@pytest.mark.django_db
def test_without_settings_the_plans_catalog_alerts_set_the_thresholds(
    clock: time_machine.Traveller,
) -> None:
    rollover = 'rollover: {max_credits: "5000"}'
    catalog.load(DEMO.replace(rollover, f"{rollover}\n    alerts: {{usage_thresholds: [25]}}"))
    acme = subscribed_customer("acme")
    use(acme, 3)  # 4,500 of 20,000: 22.5%
    assert fired(acme) == []
    use(acme, 1)  # 6,000: 30%
    assert fired(acme) == [("usage_threshold", "25")]
    use(acme, 7)  # 16,500: 82.5%, past what would be the 50 and 80% defaults
    assert fired(acme) == [("usage_threshold", "25")]


@pytest.mark.django_db
def test_the_customers_own_settings_win_over_the_plans(clock: time_machine.Traveller) -> None:
    rollover = 'rollover: {max_credits: "5000"}'
    catalog.load(DEMO.replace(rollover, f"{rollover}\n    alerts: {{usage_thresholds: [25]}}"))
    acme = subscribed_customer("acme")
    alert_settings(acme, usage_thresholds=[50])
    use(acme, 8)  # 12,000 of 20,000: 60%
    assert fired(acme) == [("usage_threshold", "50")]


@pytest.mark.django_db
def test_the_database_refuses_a_second_alert_even_without_a_period(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    acme: Customer = subscribed_customer("acme")
    fields = {"customer": acme, "period": None, "kind": AlertKind.AUTO_RECHARGE_CAP_REACHED}
    Alert.objects.create(**fields, threshold="2026-10", message="capped")
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(**fields, threshold="2026-10", message="capped again")


@pytest.mark.django_db
def test_evaluation_is_a_few_reads(
    clock: time_machine.Traveller,
    django_assert_max_num_queries: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme")
    use(acme, 11)  # 50 and 80% fired
    period = SubscriptionPeriod.objects.get()
    # The figures (balance, usage, rules, burn, alerts already fired, recharge rule) are
    # read in one round trip; Django's log does not list what it runs, so count it here.
    round_trips: list[int] = []

    def counted(statements: Any) -> Any:
        round_trips.append(len(statements))
        return pipelined(statements)

    monkeypatch.setattr(selectors, "pipelined", counted)
    # On its own: the lock and the periods, then the figures.
    with django_assert_max_num_queries(2):
        usage_evaluate(customer=acme, period_ids={period.pk})
    assert round_trips == [6]

    # As rating calls it, holding the lock and with the customer's periods read: the one
    # round trip only, and the same alerts (none new) from it.
    periods = list(SubscriptionPeriod.objects.select_related("plan_version__plan", "subscription"))
    with django_assert_max_num_queries(0):
        usage_evaluate(
            customer=acme,
            period_ids={period.pk},
            account_locked=True,
            customer_periods=periods,
        )
    assert round_trips == [6, 6]
    assert fired(acme) == [("usage_threshold", "50"), ("usage_threshold", "80")]
