"""Three months of one customer, checked against numbers worked out by hand.

Plan pro: $49.00 a month, 20,000 included credits, postpaid overage at $0.004 a credit.
Usage is large/output tokens at 15 credits per 1,000. Packs: pack_10k (10,000 credits
for $35.00, cost basis $0.0035) and pack_short (2,000 credits for $10.00, expiring after
20 days, cost basis $0.005). Every period gets a late event: stamped 30 minutes before
its end, rated 30 minutes after it (inside the grace window), it draws on the grants
usable when it happened and is invoiced with its own period.

Jan  5  buy pack_10k                       deferred +35.00
Jan 10  24,000 credits: 20,000 included, 4,000 pack_10k      recognized 14.00
Jan 31  (late) 1,500 credits from pack_10k, rated Feb 1        recognized  5.25 (Feb)
Feb  1  Jan invoice: base 49.00                        = 49.00
Feb 10  27,000 credits: 20,000 included, 4,500 pack_10k, 2,500 overage
                                                        recognized 15.75
Feb 12  buy pack_short                      deferred +10.00
Feb 15  1,500 credits from pack_short                  recognized 7.50
Feb 28  (late) 300 credits from pack_short, rated Mar 1       recognized  1.50 (Mar)
Mar  1  Feb invoice: base 49.00 + overage 2,500 x 0.004 = 59.00
Mar  4  pack_short expires with 200 left                breakage 1.00
Mar  5  credit note: 4.00 of the overage               credit note -4.00
Mar  6  paid grant through the API: 1,000 credits at $0.004 deferred +4.00
Mar 10  9,000 credits from included
Mar 31  (late) 1,200 credits from March's included credits, not April's
Apr  1  Mar invoice: base 49.00                        = 49.00
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from djmoney.money import Money

from billing_portal.invoicing.credit_notes import credit_note_issue
from billing_portal.invoicing.models import Invoice, LineKind
from billing_portal.invoicing.period_close import periods_close_due
from billing_portal.invoicing.purchases import purchase_create, purchase_demo_pay
from billing_portal.invoicing.revenue import revenue_recognize_all, revenue_report
from ledger.models import CreditGrant, GrantCategory, GrantStatus, LedgerEntry
from ledger.reconcile import run_checks
from ledger.services import credit_grant_create, credit_grants_expire_due
from metering.ingest import events_ingest
from metering.rating import events_rate_pending
from plans import catalog
from plans.models import CreditPack, Customer, SubscriptionPeriod
from plans.money import as_money
from plans.services import subscription_start, subscriptions_renew_due
from tests.plans.factories import DEMO_CATALOG, customer, plan

pytestmark = pytest.mark.django_db

JAN = datetime(2026, 1, 1, tzinfo=UTC)
START = JAN  # where the clock fixture (tests/conftest.py) stops time
SHORT_PACK = (
    '  - {code: pack_short, name: "2,000 credits", credits: "2000", price: "10.00",'
    " expires_after_days: 20}\n"
)


def at(month: int, day: int) -> datetime:
    return datetime(2026, month, day, 12, tzinfo=UTC)


def _use(clock: time_machine.Traveller, when: datetime, credits: int, name: str) -> None:
    clock.move_to(when)
    tokens = credits * 1000 // 15
    event = {
        "identifier": name,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": when.isoformat(),
        "value": str(tokens),
        "dimensions": {"model": "large", "token_type": "output"},
    }
    assert events_ingest(events=[event]).count("accepted") == 1
    events_rate_pending()


def _buy(clock: time_machine.Traveller, acme: Customer, when: datetime, pack: str) -> Invoice:
    clock.move_to(when)
    purchase = purchase_create(customer=acme, pack=CreditPack.objects.get(code=pack), actor="t")
    purchase_demo_pay(purchase=purchase, actor="t")
    purchase.refresh_from_db()
    return purchase.invoice


def _close(clock: time_machine.Traveller, end: datetime, late: int, name: str) -> Invoice:
    """Renew at ``end``; inside the grace window rate a late event of ``late`` credits
    stamped before the end; then hand the period to invoicing and invoice it."""
    clock.move_to(end)
    subscriptions_renew_due()
    clock.shift(timedelta(minutes=30))
    _rate_late(end - timedelta(minutes=30), late, name)
    clock.shift(timedelta(minutes=31))
    periods_close_due()
    period = SubscriptionPeriod.objects.get(end=end)
    return Invoice.objects.get(period=period)


def _rate_late(stamped: datetime, credits: int, name: str) -> None:
    event = {
        "identifier": name,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": stamped.isoformat(),
        "value": str(credits * 1000 // 15),
        "dimensions": {"model": "large", "token_type": "output"},
    }
    assert events_ingest(events=[event]).count("accepted") == 1
    events_rate_pending()


def _lines(invoice: Invoice) -> dict[str, Money]:
    return {
        line.kind: as_money(line.amount)
        for line in invoice.lines.all()
        if as_money(line.amount).amount
    }


def test_three_months_of_invoices_revenue_and_deferred_balance(
    clock: time_machine.Traveller,
) -> None:
    text = DEMO_CATALOG.read_text().replace("credit_packs:\n", "credit_packs:\n" + SHORT_PACK)
    catalog.load(text)
    acme = customer(external_id="acme")
    subscription_start(customer=acme, plan=plan("pro"), actor="t")

    pack_invoice = _buy(clock, acme, at(1, 5), "pack_10k")
    _use(clock, at(1, 10), 24_000, "jan")
    january = _close(clock, datetime(2026, 2, 1, tzinfo=UTC), 1_500, "jan-late")

    _use(clock, at(2, 10), 27_000, "feb")
    short_invoice = _buy(clock, acme, at(2, 12), "pack_short")
    _use(clock, at(2, 15), 1_500, "feb-late-month")
    february = _close(clock, datetime(2026, 3, 1, tzinfo=UTC), 300, "feb-late")

    clock.move_to(at(3, 4))
    assert credit_grants_expire_due() == 0  # its late usage may still arrive
    clock.shift(timedelta(hours=1))
    assert credit_grants_expire_due() == 1
    clock.move_to(at(3, 5))
    overage_line = february.lines.get(kind=LineKind.OVERAGE)
    note = credit_note_issue(
        invoice=february,
        lines={overage_line.pk: Decimal("4.00")},
        reason="product_unsatisfactory",
        method="customer_credit",
        actor="staff:finance",
    )
    clock.move_to(at(3, 6))
    api_grant = credit_grant_create(  # as POST /credit_grants does: paid, at a cost basis
        account=acme.account,
        amount="1000",
        category="paid",
        actor="api:backend",
        cost_basis=Money("0.004", "USD"),
        source_type="api",
    )
    _use(clock, at(3, 10), 9_000, "mar")
    march = _close(clock, datetime(2026, 4, 1, tzinfo=UTC), 1_200, "mar-late")

    # Invoices
    assert (pack_invoice.number, pack_invoice.total) == ("INV-000001", Money("35.00", "USD"))
    assert (january.number, january.total) == ("INV-000002", Money("49.00", "USD"))
    assert _lines(january) == {"base_fee": Money("49.00", "USD")}
    assert (short_invoice.number, short_invoice.total) == ("INV-000003", Money("10.00", "USD"))
    assert (february.number, february.total) == ("INV-000004", Money("59.00", "USD"))
    assert _lines(february) == {
        "base_fee": Money("49.00", "USD"),
        "overage": Money("10.00", "USD"),
    }
    assert (march.number, march.total) == ("INV-000005", Money("49.00", "USD"))
    assert (note.number, note.total) == ("CN-000001", Money("4.00", "USD"))
    used = [m.lines.get(kind=LineKind.INCLUDED_USAGE).credits for m in (january, february, march)]
    assert used == [Decimal(25_500), Decimal(26_300), Decimal(10_200)]
    # March's late event drew on March's credits: April's are whole.
    april = SubscriptionPeriod.objects.get(start=datetime(2026, 4, 1, tzinfo=UTC))
    april_included = CreditGrant.objects.get(
        source_id=str(april.pk), category=GrantCategory.INCLUDED
    )
    assert april_included.remaining == Decimal(20_000)
    march_included = CreditGrant.objects.get(
        source_id=str(march.period_id), category=GrantCategory.INCLUDED
    )
    assert march_included.status == GrantStatus.EXPIRED
    assert LedgerEntry.objects.get(grant=march_included, kind="expire").credits == -9_800

    # Revenue and the deferred balance, month by month
    revenue_recognize_all()
    assert revenue_recognize_all() == 0  # a second run writes nothing

    def report(month: int) -> tuple[dict[str, Decimal], Decimal]:
        result = revenue_report(month=date(2026, month, 1))
        return {
            k: v.quantize(Decimal("0.01")) for k, v in result.recognized.items() if v
        }, result.deferred_balance

    assert report(1) == (
        {"base_fee": Decimal("49.00"), "recognized_usage": Decimal("14.00")},
        Decimal("21.00"),
    )
    assert report(2) == (
        {
            "base_fee": Decimal("49.00"),
            "recognized_usage": Decimal("28.50"),
            "overage": Decimal("10.00"),
        },
        Decimal("2.50"),
    )
    # The API's paid grant (1,000 credits at $0.004) is deferred when granted; March's
    # usage came from included credits (they expire first), so it is all still deferred.
    assert report(3) == (
        {
            "base_fee": Decimal("49.00"),
            "recognized_usage": Decimal("1.50"),
            "breakage": Decimal("1.00"),
            "credit_note": Decimal("-4.00"),
        },
        Decimal("4.00"),
    )
    api_grant.refresh_from_db()
    assert api_grant.remaining == Decimal(1000)
    assert [f for f in run_checks() if f.problems] == []
