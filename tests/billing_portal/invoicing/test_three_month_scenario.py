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

from billing_portal.invoicing.collection import (
    PaymentFailure,
    invoice_paid_record,
    invoice_payment_failure_record,
    subscription_status,
)
from billing_portal.invoicing.credit_notes import credit_note_issue
from billing_portal.invoicing.margin import margin_report
from billing_portal.invoicing.models import Invoice, LineKind
from billing_portal.invoicing.period_close import periods_close_due
from billing_portal.invoicing.purchases import purchase_create, purchase_demo_pay
from billing_portal.invoicing.revenue import revenue_recognize_all, revenue_report
from billing_portal.invoicing.services import period_invoice_draft
from ledger.models import CreditGrant, GrantCategory, GrantStatus, LedgerEntry
from ledger.reconcile import run_checks
from ledger.services import credit_grant_create, credit_grants_expire_due
from metering.ingest import events_ingest
from metering.models import EventRating
from metering.rating import events_rate_pending
from metering.services import AuthorizationRequest, authorization_create
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


# --- tiers, features and a payment that fails ----------------------------------------------


STARTER_LIMIT = 'doc_summaries: {meter: doc_summaries, limit: "500"}'


def _tokens(when: datetime, name: str, model: str, kind: str, tokens: int) -> None:
    event = {
        "identifier": name,
        "event_name": "llm.tokens",
        "customer": "bigco",
        "timestamp": when.isoformat(),
        "value": str(tokens),
        "dimensions": {"model": model, "token_type": kind},
    }
    assert events_ingest(events=[event]).count("accepted") == 1
    events_rate_pending()


def _ask(who: Customer, name: str, feature: str | None = None) -> tuple[str, str]:
    answer = authorization_create(
        customer=who,
        request=AuthorizationRequest(
            identifier=name,
            event_name="doc.summary" if feature else "llm.tokens",
            value=Decimal(1) if feature else Decimal(1000),
            dimensions=None if feature else {"model": "small", "token_type": "input"},
            hold=False,
            feature=feature,
        ),
        actor="t",
    )
    return answer.decision, answer.reason


def _renew_and_close(clock: time_machine.Traveller, end: datetime) -> None:
    clock.move_to(end)
    subscriptions_renew_due()
    clock.shift(timedelta(hours=1, minutes=1))
    periods_close_due()


def test_three_months_with_tiers_a_feature_limit_and_a_failed_payment(
    clock: time_machine.Traveller,
) -> None:
    """Three months of two more customers on the demo catalog, with hand-worked figures.

    bigco, plan scale: $999.00 a month, 500,000 included credits, postpaid overage at
    $0.003 a credit, access paused 7 days after a failed payment. Rate card scale, per 1,000
    tokens: large input graduated 2.5 (first 10M) / 2 (to 100M) / 1.5; large output graduated
    15 (first 10M) / 12; small volume 0.5 (total up to 50M) / 0.4 for every token. Provider
    cost per 1,000: large input $0.0025, large output $0.01, small $0.0003.

    Jan 10  large input 150M: 25,000 + 180,000 + 75,000 = 280,000 (all included)
    Jan 12  large output 20M: 150,000 + 120,000 = 270,000 (220,000 included, 50,000 overage)
    Jan 15  small 30M at the running tier 0.5 = 15,000 (overage)
    Jan 20  small 30M: the total reaches 60M, tier 0.4: 12,000 (overage)
    Feb  1  close: small's formula is 60M x 0.4 = 24,000, 27,000 were charged: 3,000 given
            back off the overage. Invoice: 999.00 + 77,000 x 0.003 = 231.00 - 9.00 = 1,221.00
    Feb  2  its payment fails; Feb 5 still allowed, Feb 10 denied payment_overdue
    Feb 12  paid: allowed again at once
    Feb 15  large input 12M: tiers start again each period: 25,000 + 4,000 = 29,000
    Mar  1  Feb invoice 999.00; Apr 1 Mar invoice 999.00

    smallco, plan starter with at most 30 document summaries a period (no gpt4_access):
    Jan  8  30 summaries at 50 credits; the 31st is denied feature_limit_reached, gpt4_access
            feature_not_in_plan; Feb 2 (a new period) a summary is allowed again.

    Revenue: Jan base 999.00 + overage 222.00; Feb base 999.00; Mar base 999.00.
    Provider cost: Jan 375.00 + 200.00 + 18.00 = 593.00; Feb 12M x 0.0025 = 30.00.
    """
    text = DEMO_CATALOG.read_text()
    assert STARTER_LIMIT in text
    catalog.load(text.replace(STARTER_LIMIT, STARTER_LIMIT.replace('"500"', '"30"')))
    bigco, smallco = customer(external_id="bigco"), customer(external_id="smallco")
    big_sub = subscription_start(customer=bigco, plan=plan("scale"), actor="t")
    subscription_start(customer=smallco, plan=plan("starter"), actor="t")

    clock.move_to(at(1, 8))
    summaries = [
        {
            "identifier": f"sum-{i:02d}",
            "event_name": "doc.summary",
            "customer": "smallco",
            "timestamp": (at(1, 8) - timedelta(minutes=i)).isoformat(),
            "value": "1",
        }
        for i in range(30)
    ]
    assert events_ingest(events=summaries).count("accepted") == 30
    events_rate_pending()
    assert _ask(smallco, "sum-31", "doc_summaries") == ("deny", "feature_limit_reached")
    assert _ask(smallco, "gpt4", "gpt4_access") == ("deny", "feature_not_in_plan")

    clock.move_to(at(1, 10))
    _tokens(at(1, 10), "big-in", "large", "input", 150_000_000)
    clock.move_to(at(1, 12))
    _tokens(at(1, 12), "big-out", "large", "output", 20_000_000)
    clock.move_to(at(1, 15))
    _tokens(at(1, 15), "small-1", "small", "input", 30_000_000)
    clock.move_to(at(1, 20))
    _tokens(at(1, 20), "small-2", "small", "output", 30_000_000)
    charged = dict(
        EventRating.objects.filter(event__customer=bigco).values_list(
            "event__identifier", "credits"
        )
    )
    assert charged == {
        "big-in": Decimal(280_000),
        "big-out": Decimal(270_000),
        "small-1": Decimal(15_000),
        "small-2": Decimal(12_000),
    }
    clock.move_to(at(1, 31))
    estimate = period_invoice_draft(period=SubscriptionPeriod.objects.get(subscription=big_sub))
    _renew_and_close(clock, datetime(2026, 2, 1, tzinfo=UTC))
    january = Invoice.objects.get(customer=bigco, period__start=JAN)
    assert (january.total, estimate.total) == (Money("1221.00", "USD"), Money("1221.00", "USD"))
    assert _lines(january) == {
        "base_fee": Money("999.00", "USD"),
        "overage": Money("231.00", "USD"),
        "tier_true_up": Money("-9.00", "USD"),
    }
    tiers = [
        (line.quantity, line.credits)
        for line in january.lines.filter(kind=LineKind.USAGE_TIER).order_by("pk")
    ]
    assert tiers == [
        (Decimal(10_000_000), Decimal(25_000)),
        (Decimal(90_000_000), Decimal(180_000)),
        (Decimal(50_000_000), Decimal(75_000)),
        (Decimal(10_000_000), Decimal(150_000)),
        (Decimal(10_000_000), Decimal(120_000)),
        (Decimal(60_000_000), Decimal(24_000)),
    ]
    small_january = Invoice.objects.get(customer=smallco, period__start=JAN)
    assert small_january.total == Money("0.00", "USD")
    assert small_january.lines.get(kind=LineKind.INCLUDED_USAGE).credits == Decimal(1_500)

    # A failed payment: allowed inside the plan's 7 days, denied after, restored when paid.
    clock.move_to(at(2, 2))
    assert _ask(smallco, "sum-feb", "doc_summaries") == ("allow", "")  # a new period
    invoice_payment_failure_record(
        invoice=january,
        failure=PaymentFailure(failed_at=at(2, 2), attempts=1, error="Your card was declined."),
    )
    big_sub.refresh_from_db()
    assert subscription_status(big_sub) == "past_due"
    clock.move_to(at(2, 5))
    assert _ask(bigco, "feb-5") == ("allow", "")
    clock.move_to(at(2, 10))
    assert _ask(bigco, "feb-10") == ("deny", "payment_overdue")
    clock.move_to(at(2, 12))
    invoice_paid_record(invoice=january, paid_at=at(2, 12))
    assert _ask(bigco, "feb-12") == ("allow", "")
    big_sub.refresh_from_db()
    assert subscription_status(big_sub) == "active"

    clock.move_to(at(2, 15))
    _tokens(at(2, 15), "feb-in", "large", "input", 12_000_000)
    assert EventRating.objects.get(event__identifier="feb-in").credits == 29_000
    _renew_and_close(clock, datetime(2026, 3, 1, tzinfo=UTC))
    _renew_and_close(clock, datetime(2026, 4, 1, tzinfo=UTC))
    totals = [i.total for i in Invoice.objects.filter(customer=bigco).order_by("period__start")]
    assert totals == [Money(v, "USD") for v in ("1221.00", "999.00", "999.00")]

    revenue_recognize_all()

    def recognized(month: int) -> dict[str, Decimal]:
        result = revenue_report(month=date(2026, month, 1))
        return {k: v.quantize(Decimal("0.01")) for k, v in result.recognized.items() if v}

    assert recognized(1) == {"base_fee": Decimal("999.00"), "overage": Decimal("222.00")}
    assert recognized(2) == {"base_fee": Decimal("999.00")}
    assert recognized(3) == {"base_fee": Decimal("999.00")}

    (jan,) = margin_report(month=date(2026, 1, 1)).currencies
    assert jan.total.revenue.quantize(Decimal("0.01")) == Decimal("1221.00")
    assert jan.total.cost == Decimal("593.00")
    costs = {(r.model, r.customer): r.cost for r in jan.usage}
    assert costs[("large", "bigco")] == Decimal("575.00")
    assert costs[("small", "bigco")] == Decimal("18.00")
    units = {(r.model, r.customer): r.units for r in jan.usage}
    assert units[("large", "bigco")] == Decimal(170_000_000)
    (feb,) = margin_report(month=date(2026, 2, 1)).currencies
    assert (feb.total.revenue.quantize(Decimal("0.01")), feb.total.cost) == (
        Decimal("999.00"),
        Decimal("30.00"),
    )
    assert [f for f in run_checks() if f.problems] == []
