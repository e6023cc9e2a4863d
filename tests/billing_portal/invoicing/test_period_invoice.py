"""Period close builds one invoice per subscription period from the ledger."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
import time_machine
from django.db import connection
from django.db.models import F
from djmoney.money import Money

from billing_portal.invoicing.models import Invoice, InvoiceLineEntry
from billing_portal.invoicing.period_close import period_close, periods_close_due
from billing_portal.invoicing.services import period_invoice_draft, period_invoice_total
from ledger.models import LedgerEntry
from metering.ingest import events_ingest
from metering.models import PeriodUsage
from metering.rating import events_rate_pending
from metering.services import event_cancel
from plans.models import SubscriptionPeriod
from plans.money import as_money
from plans.services import subscription_cancel, subscription_start, subscriptions_renew_due
from tests.dburl import database_url_for_subprocess
from tests.plans.factories import customer, load_demo_catalog, plan

START = datetime(2026, 10, 1, tzinfo=UTC)


def _use(clock: time_machine.Traveller, identifier: str, tokens: int, at: datetime) -> None:
    # large/output: 15 credits per 1,000 tokens
    event = {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": at.isoformat(),
        "value": str(tokens),
        "dimensions": {"model": "large", "token_type": "output"},
    }
    clock.move_to(at)
    assert events_ingest(events=[event]).count("accepted") == 1
    events_rate_pending()


def _first_period_due(clock: time_machine.Traveller) -> SubscriptionPeriod:
    """Renewed, and past the grace window: due to be closed."""
    first = SubscriptionPeriod.objects.order_by("start").first()
    assert first is not None
    clock.move_to(first.end)
    subscriptions_renew_due()
    clock.shift(timedelta(hours=1))
    return first


def _close_first_period(clock: time_machine.Traveller) -> SubscriptionPeriod:
    first = _first_period_due(clock)
    assert periods_close_due() == 1
    first.refresh_from_db()
    return first


@pytest.mark.django_db
def test_a_postpaid_period_is_billed_base_fee_plus_overage(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    acme = customer()
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    _use(clock, "big", 1_600_000, START + timedelta(days=3))  # 24,000 credits: 4,000 beyond 20,000
    _use(clock, "cancelled", 100_000, START + timedelta(days=4))  # 1,500 credits, then cancelled
    event_cancel(customer=acme, identifier="cancelled", reason="duplicate", actor="t")
    first = _close_first_period(clock)

    invoice = Invoice.objects.get(period=first)
    lines = {line.kind: line for line in invoice.lines.all()}
    assert set(lines) == {"base_fee", "included_usage", "overage"}
    assert lines["base_fee"].amount == Money("49.00", "USD")
    assert (lines["included_usage"].credits, lines["included_usage"].amount) == (
        Decimal(20000),
        Money(0, "USD"),
    )
    assert (lines["overage"].quantity, lines["overage"].amount) == (
        Decimal(4000),
        Money("16.00", "USD"),
    )
    assert invoice.total == Money("65.00", "USD")
    assert invoice.number == "INV-000001"
    # Each line names the ledger entries it was built from; the cancelled event's are not billed.
    overage_entries = LedgerEntry.objects.filter(invoice_link__line=lines["overage"])
    assert sum(e.credits for e in overage_entries) == Decimal(-4000)
    assert InvoiceLineEntry.objects.filter(line__invoice=invoice).count() == 2


@pytest.mark.django_db
def test_the_estimated_total_is_the_invoice_total_from_the_periods_counters(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    acme = customer()
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    for day in range(1, 13):  # 2,000 tokens a day: 30 credits each, all drawn from grants
        _use(clock, f"small-{day}", 2_000, START + timedelta(days=day))
    _use(clock, "big", 1_600_000, START + timedelta(days=13))  # 24,000: 4,360 beyond 20,000
    _use(clock, "cancelled", 100_000, START + timedelta(days=14))  # 1,500, then cancelled
    event_cancel(customer=acme, identifier="cancelled", reason="duplicate", actor="t")
    period = SubscriptionPeriod.objects.select_related("subscription__customer").get()

    estimate = period_invoice_total(period=period)
    assert estimate == period_invoice_draft(period=period).total == Money("66.44", "USD")
    # Read from the counters rating and cancellation keep, not from the events' entries.
    counters = PeriodUsage.objects.filter(period=period)
    counters.update(overage=F("overage") + 100)
    assert period_invoice_total(period=period) == Money("66.84", "USD")  # 100 more at $0.004
    counters.update(overage=F("overage") - 100)

    first = _close_first_period(clock)
    assert Invoice.objects.get(period=first).total == estimate


@pytest.mark.django_db
def test_running_period_close_twice_makes_one_invoice(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    subscription_start(customer=customer(), plan=plan("starter"), actor="t")
    first = _close_first_period(clock)
    assert period_close(period_id=first.pk) is None  # closed and invoiced already
    assert Invoice.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_make_one_invoice() -> None:
    with time_machine.travel(START, tick=False) as clock:
        load_demo_catalog()
        subscription_start(customer=customer(), plan=plan("pro"), actor="t")
        first = _first_period_due(clock)
    barrier = threading.Barrier(4)
    results: list[int] = []
    errors: list[BaseException] = []

    def close() -> None:
        try:
            barrier.wait()
            invoice = period_close(period_id=first.pk)
            results.append(invoice.pk if invoice else 0)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=close) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    (invoice,) = Invoice.objects.all()
    assert sorted(results) == [0, 0, 0, invoice.pk]  # one worker closed it, once


@pytest.mark.django_db(transaction=True)
def test_handing_a_period_over_runs_the_invoicing_task_after_commit() -> None:
    from billing_portal.celery import app

    app.conf.task_always_eager = True
    try:
        with time_machine.travel(START, tick=False) as clock:
            load_demo_catalog()
            subscription_start(customer=customer(), plan=plan("pro"), actor="t")
            first = _close_first_period(clock)  # the signal enqueues the task on commit
    finally:
        app.conf.task_always_eager = False
    invoice = Invoice.objects.get()
    assert invoice.period_id == first.pk
    assert invoice.total == Money("49.00", "USD")


@pytest.mark.django_db(transaction=True)
def test_a_close_is_not_skipped_while_another_holds_the_shared_plan_rows() -> None:
    """Closes of periods on the same plan run at once: locking a period must not lock the
    plan version every period shares (a concurrent close would skip this one)."""
    with time_machine.travel(START, tick=False) as clock:
        load_demo_catalog()
        subscription_start(customer=customer(), plan=plan("pro"), actor="t")
        first = _first_period_due(clock)
        other = psycopg.connect(database_url_for_subprocess(), autocommit=False)
        try:
            other.execute(
                "SELECT 1 FROM plans_planversion WHERE id = %s FOR UPDATE", [first.plan_version_id]
            )
            invoice = period_close(period_id=first.pk)
        finally:
            other.rollback()
            other.close()
    assert invoice is not None
    assert Invoice.objects.get(period=first).pk == invoice.pk


@pytest.mark.django_db
def test_cancelling_now_bills_the_base_fee_of_the_time_used(clock: time_machine.Traveller) -> None:
    """Pro ($49.00) from Oct 1 for 31 days, cancelled after 3: 28/31 of the fee comes back."""
    load_demo_catalog()
    subscription = subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    clock.move_to(START + timedelta(days=3))
    subscription_cancel(subscription=subscription, actor="t", when="now")
    clock.shift(timedelta(hours=1))
    assert periods_close_due() == 1

    invoice = Invoice.objects.get()
    lines = {line.kind: as_money(line.amount).amount for line in invoice.lines.all()}
    assert lines["base_fee"] == Decimal("49.00")
    assert lines["proration"] == Decimal("-44.26")  # 49.00 x 28 / 31, to the cent
    assert as_money(invoice.total).amount == Decimal("4.74")
