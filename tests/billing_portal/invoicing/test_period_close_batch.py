"""Periods are closed in batches: one transaction, a savepoint per period with a true-up,
numbers last."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from djmoney.money import Money

from billing_portal.invoicing import period_close as flow
from billing_portal.invoicing import services
from billing_portal.invoicing.models import Invoice, InvoiceLineEntry
from billing_portal.invoicing.period_close import period_close, periods_close, periods_close_due
from billing_portal.invoicing.tasks import (
    period_close_task,
    periods_close_due_task,
    periods_close_task,
)
from billing_portal.outbound.models import OutboundEvent
from ledger.models import (
    CauseType,
    CreditGrant,
    EntryKind,
    GrantCategory,
    GrantStatus,
    LedgerEntry,
)
from ledger.reconcile import run_checks
from metering.ingest import events_ingest
from metering.rating import events_rate_pending
from plans.models import PERIOD_SOURCE, PeriodStatus, SubscriptionPeriod
from plans.services import subscription_start, subscriptions_renew_due
from tests.plans.factories import customer, load_demo_catalog, plan

START = datetime(2026, 10, 1, tzinfo=UTC)

# Customers of the demo catalog, their usage (large/output tokens: 15 credits per 1,000,
# in five events) and the total their period's invoice must come to.
SHAPES: list[tuple[str, str, int, str]] = [
    ("over", "pro", 1_600_000, "65.00"),  # 24,000 credits: $49 + 4,000 x $0.004
    ("idle", "pro", 0, "49.00"),  # 20,000 included unused: 5,000 roll over
    ("light", "starter", 100_000, "0.00"),
    ("team", "team", 1_000_000, "199.00"),  # 15,000 of 100,000
    ("just", "pro", 1_400_000, "53.00"),  # 21,000 credits: $49 + 1,000 x $0.004
]


def _periods_due(
    clock: time_machine.Traveller, shapes: list[tuple[str, str, int, str]]
) -> dict[str, SubscriptionPeriod]:
    """One customer per shape, subscribed at START with its usage; the first periods
    renewed and past the grace window, due to be closed."""
    load_demo_catalog()
    for name, plan_code, _, _ in shapes:
        subscription_start(customer=customer(name), plan=plan(plan_code), actor="t")
    clock.move_to(START + timedelta(days=3))
    events = [
        {
            "identifier": f"{name}-{n}",
            "event_name": "llm.tokens",
            "customer": name,
            "timestamp": (START + timedelta(days=2, hours=n)).isoformat(),
            "value": str(tokens // 5),
            "dimensions": {"model": "large", "token_type": "output"},
        }
        for name, _, tokens, _ in shapes
        if tokens
        for n in range(5)
    ]
    assert events_ingest(events=events).count("accepted") == len(events)
    while events_rate_pending():
        pass
    first = SubscriptionPeriod.objects.earliest("end")
    clock.move_to(first.end)
    subscriptions_renew_due()
    clock.shift(timedelta(hours=1))
    periods = SubscriptionPeriod.objects.filter(status=PeriodStatus.CLOSED).select_related(
        "subscription__customer"
    )
    return {period.subscription.customer.external_id: period for period in periods}


def _numbers() -> list[str]:
    return list(Invoice.objects.order_by("period_id").values_list("number", flat=True))


def _in_sequence(count: int) -> list[str]:
    return [f"INV-{n:06d}" for n in range(1, count + 1)]


def _untouched(period: SubscriptionPeriod) -> None:
    """Still closed, not invoiced, its included credits not written off: closable."""
    period.refresh_from_db()
    assert period.status == PeriodStatus.CLOSED
    assert not Invoice.objects.filter(period=period).exists()
    included = CreditGrant.objects.get(
        source_type=PERIOD_SOURCE, source_id=str(period.pk), category=GrantCategory.INCLUDED
    )
    assert included.status in (GrantStatus.ACTIVE, GrantStatus.DEPLETED)
    assert not LedgerEntry.objects.filter(grant=included, kind=EntryKind.EXPIRE).exists()
    assert not CreditGrant.objects.filter(idempotency_key=f"rollover:{period.pk}").exists()


def _failing_for(period_id: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, which raises for one period after it has written what it writes."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if period_id in {period.pk for period in kwargs["periods"]}:
            raise RuntimeError(f"period {period_id} fails")
        return result

    return wrapper


@pytest.mark.django_db
def test_it_invoices_each_period_of_a_batch_with_its_total_and_numbers_in_order(
    clock: time_machine.Traveller,
) -> None:
    periods = _periods_due(clock, SHAPES)
    ids = sorted(period.pk for period in periods.values())

    invoices = periods_close(period_ids=list(reversed(ids)))

    assert len(invoices) == len(SHAPES)
    totals = dict(Invoice.objects.values_list("customer__external_id", "total"))
    assert totals == {name: Decimal(total) for name, _, _, total in SHAPES}
    # Numbered last, in period order, without a gap.
    assert _numbers() == _in_sequence(len(SHAPES))
    # Each invoice links every consume and overage entry of its customer's events.
    for name in periods:
        invoice = Invoice.objects.get(period=periods[name])
        linked = InvoiceLineEntry.objects.filter(line__invoice=invoice)
        usage = LedgerEntry.objects.filter(
            account__customer__external_id=name,
            cause_type=CauseType.EVENT,
            kind__in=[EntryKind.CONSUME, EntryKind.OVERAGE],
        )
        assert sorted(linked.values_list("entry_id", flat=True)) == sorted(
            usage.values_list("pk", flat=True)
        )
    assert set(SubscriptionPeriod.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        PeriodStatus.INVOICING
    }
    # Each numbered invoice is announced once, with its number.
    finalized = OutboundEvent.objects.filter(type="invoice.finalized")
    assert sorted(event.data["number"] for event in finalized) == _in_sequence(len(SHAPES))
    assert {f.check: f.problems for f in run_checks() if f.problems} == {}


@pytest.mark.django_db
def test_a_period_that_fails_in_a_batch_is_rolled_back_alone_and_closed_later(
    clock: time_machine.Traveller, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    periods = _periods_due(clock, SHAPES)
    ids = sorted(period.pk for period in periods.values())
    failing = periods["idle"]  # its credits would be written off and 5,000 rolled over
    monkeypatch.setattr(
        flow, "periods_credits_close", _failing_for(failing.pk, flow.periods_credits_close)
    )

    with caplog.at_level(logging.ERROR, logger=flow.__name__):
        invoices = periods_close(period_ids=ids)

    assert len(invoices) == len(SHAPES) - 1
    assert f"period {failing.pk}: close failed" in caplog.text
    _untouched(failing)
    assert _numbers() == _in_sequence(len(SHAPES) - 1)

    monkeypatch.undo()
    assert periods_close_due() == 1  # the next sweep closes it
    invoice = Invoice.objects.get(period=failing)
    assert (invoice.number, invoice.total) == (f"INV-{len(SHAPES):06d}", Money("49.00", "USD"))
    assert CreditGrant.objects.filter(idempotency_key=f"rollover:{failing.pk}").exists()
    assert {f.check: f.problems for f in run_checks() if f.problems} == {}


@pytest.mark.django_db
def test_a_batch_that_fails_as_a_whole_closes_its_periods_one_by_one(
    clock: time_machine.Traveller, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An invoice that cannot be built fails the batch's shared steps: the batch is rolled
    back and its periods closed one by one, so only that one is left."""
    periods = _periods_due(clock, SHAPES)
    ids = sorted(period.pk for period in periods.values())
    failing = periods["over"]
    real = services._period_lines

    def lines(period: SubscriptionPeriod, facts: Any) -> Any:
        if period.pk == failing.pk:
            raise RuntimeError("cannot build this invoice")
        return real(period, facts)

    monkeypatch.setattr(services, "_period_lines", lines)

    with caplog.at_level(logging.ERROR, logger=flow.__name__):
        invoices = periods_close(period_ids=ids)

    assert sorted(invoice.period_id or 0 for invoice in invoices) == sorted(set(ids) - {failing.pk})
    assert "closing one by one" in caplog.text
    _untouched(failing)
    assert _numbers() == _in_sequence(len(SHAPES) - 1)

    monkeypatch.undo()
    (invoice,) = periods_close(period_ids=[failing.pk])
    assert (invoice.number, invoice.total) == (f"INV-{len(SHAPES):06d}", Money("65.00", "USD"))
    assert sorted(_numbers()) == _in_sequence(len(SHAPES))


@pytest.mark.django_db
def test_closing_one_period_alone_raises_what_fails(
    clock: time_machine.Traveller, monkeypatch: pytest.MonkeyPatch
) -> None:
    periods = _periods_due(clock, SHAPES[:1])
    failing = periods["over"]
    monkeypatch.setattr(
        flow, "periods_credits_close", _failing_for(failing.pk, flow.periods_credits_close)
    )

    with pytest.raises(RuntimeError, match="fails"):
        period_close(period_id=failing.pk)

    _untouched(failing)


@pytest.mark.django_db
def test_the_same_batch_sent_twice_invoices_each_period_once(
    clock: time_machine.Traveller,
) -> None:
    periods = _periods_due(clock, SHAPES)
    ids = [period.pk for period in periods.values()]

    assert len(periods_close(period_ids=ids)) == len(SHAPES)
    assert periods_close(period_ids=ids) == []
    assert period_close_task(ids[0]) is None  # a message of the one-period shape

    assert Invoice.objects.count() == len(SHAPES)
    assert _numbers() == _in_sequence(len(SHAPES))


@pytest.mark.django_db(transaction=True)
def test_workers_racing_on_overlapping_batches_invoice_each_period_once() -> None:
    with time_machine.travel(START, tick=False) as clock:
        periods = _periods_due(clock, SHAPES)
    ids = sorted(period.pk for period in periods.values())
    batches = [ids, list(reversed(ids)), ids[:3], ids[2:], ids[::2], ids]
    barrier = threading.Barrier(len(batches))
    made: list[int | None] = []
    errors: list[BaseException] = []

    def close(batch: list[int]) -> None:
        try:
            barrier.wait()
            made.extend(invoice.period_id for invoice in periods_close(period_ids=batch))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=close, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(pk or 0 for pk in made) == ids  # each period invoiced by exactly one worker
    assert sorted(Invoice.objects.values_list("period_id", flat=True)) == ids
    assert sorted(_numbers()) == _in_sequence(len(ids))
    totals = dict(Invoice.objects.values_list("customer__external_id", "total"))
    assert totals == {name: Decimal(total) for name, _, _, total in SHAPES}


def _statements(period_ids: list[int]) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert len(periods_close(period_ids=period_ids)) == len(period_ids)
    return len(captured.captured_queries)


@pytest.mark.django_db
def test_a_periods_own_statements_do_not_grow_with_its_events_nor_the_batch(
    clock: time_machine.Traveller,
) -> None:
    """A batch closes credits and reads and writes invoices, lines and links in a few
    statements for all its periods, and announces the invoices in a few more; a period
    with nothing to true up costs no statement of its own. A query per period, grant,
    line or ledger entry fails."""
    shapes = [(f"c{n}", "pro", 1_600_000, "65.00") for n in range(9)]
    ids = sorted(period.pk for period in _periods_due(clock, shapes).values())
    _statements(ids[:1])  # the number sequence's row is created once

    two = _statements(ids[1:3])
    six = _statements(ids[3:9])

    # A period's own: none (on "pro", no tiered rate: no true-up, so no savepoint for it).
    assert six == two
    # The batch's: periods, invoices and accounts locked or read (3), true-ups, changes,
    # usage entries and tiered usage read (4), the credits closed in a savepoint (grants
    # read, accounts and grants locked, operations, entries and grants written, the
    # write-offs read back, the periods handed over: 10), invoices, lines, links written
    # (3), the number sequence (2) and the numbers (1), the invoice.finalized events
    # published in a savepoint (events and endpoints: 4), all in a savepoint of the
    # test's transaction (2).
    assert two <= 30
    assert sorted(_numbers()) == _in_sequence(9)


@pytest.mark.django_db
def test_the_beat_job_sends_one_task_per_batch_of_due_periods(
    clock: time_machine.Traveller, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = sorted(period.pk for period in _periods_due(clock, SHAPES).values())
    monkeypatch.setattr(flow, "BATCH_SIZE", 2)

    with mock.patch.object(periods_close_task, "apply_async") as send:
        assert periods_close_due_task() == len(SHAPES)

    sent = [call.args[0][0] for call in send.call_args_list]
    assert sent == [ids[0:2], ids[2:4], ids[4:5]]
    for batch in sent:
        assert len(periods_close_task(batch)) == len(batch)
    assert _numbers() == _in_sequence(len(SHAPES))
