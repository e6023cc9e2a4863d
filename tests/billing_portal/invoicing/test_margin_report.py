"""The margin report for January 2026, checked against figures worked out by hand.

Catalog (costs per 1M tokens):      credits    cost
  input_tokens  model big              3,000    2.50
  input_tokens  model small              150    0.15
  output_tokens model big             15,000   10.00
  output_tokens model small              600    0.60
Plan "ai": $20.00 a month, 1,000 included credits, postpaid overage at $0.01 a credit.
Pack "pack_1k": 1,000 credits for $5.00 (cost basis $0.005 a credit).

acme (pack bought Jan 2):          tokens  credits  cost  drawn from (revenue)
  Jan 5  A  input big        200,000      600  0.50  included
  Jan 6  B  output big        40,000      600  0.40  400 included, 200 pack (1.00)
  Jan 7  C  input small    2,000,000      300  0.30  pack (1.50)
  Jan 8  D  output small     500,000      300  0.30  pack (1.50), cancelled Jan 9 (-1.50)
  Jan 10 E  output small   1,000,000      600  0.60  500 pack (2.50), 100 overage (1.00)
  Jan 12 F  output big        20,000      300  0.20  300 overage (3.00)
globex:
  Jan 5  G  input big        100,000      300  0.25  included
initech (no plan): 100 paid credits at $0.01, expiring Jan 20 unused: breakage 1.00.

January's revenue: base fees 2 x 20.00, usage from the pack 5.00 (D's consumption and its
reversal cancel out), overage 4.00 (on the period's last day), breakage 1.00 = 50.00.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
import time_machine
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from djmoney.money import Money

from billing_portal.invoicing.credit_notes import credit_note_issue
from billing_portal.invoicing.margin import (
    MarginReport,
    MarginRow,
    margin_report,
    model_label,
    split,
)
from billing_portal.invoicing.models import Invoice, LineKind
from billing_portal.invoicing.period_close import periods_close_due
from billing_portal.invoicing.purchases import purchase_create, purchase_demo_pay
from billing_portal.invoicing.revenue import revenue_recognize_all, revenue_report
from ledger.services import credit_grant_create, credit_grants_expire_due
from metering.ingest import events_ingest
from metering.models import EventRating
from metering.rating import events_rate_pending
from metering.services import event_cancel
from plans import catalog
from plans.models import CreditPack
from plans.services import subscription_start, subscriptions_renew_due
from tests.plans.factories import customer, plan

pytestmark = pytest.mark.django_db

START = datetime(2026, 1, 1, tzinfo=UTC)
JANUARY = date(2026, 1, 1)

CATALOG = """
currency: USD
meters:
  - {code: input_tokens, event_name: llm.input, aggregation: sum, unit: tokens,
     dimensions: [model], display_name: Input tokens}
  - {code: output_tokens, event_name: llm.output, aggregation: sum, unit: tokens,
     dimensions: [model], display_name: Output tokens}
rate_cards:
  - code: ai
    effective_from: "2026-01-01T00:00:00Z"
    rates:
      - {meter: input_tokens, match: {model: big}, credits: "3000", per: 1000000, cost: "2.50"}
      - {meter: input_tokens, match: {model: small}, credits: "150", per: 1000000, cost: "0.15"}
      - {meter: output_tokens, match: {model: big}, credits: "15000", per: 1000000,
         cost: "10.00"}
      - {meter: output_tokens, match: {model: small}, credits: "600", per: 1000000, cost: "0.60"}
plans:
  - code: ai
    name: AI
    interval: month
    base_fee: "20.00"
    included_credits: "1000"
    rate_card: ai
    overage: {policy: postpaid, price_per_credit: "0.01"}
credit_packs:
  - {code: pack_1k, name: "1,000 credits", credits: "1000", price: "5.00"}
"""


def at(day: int, month: int = 1) -> datetime:
    return datetime(2026, month, day, 12, tzinfo=UTC)


def _use(clock: time_machine.Traveller, day: int, who: str, name: str, tokens: int) -> None:
    meter, model = name.split()
    clock.move_to(at(day))
    event = {
        "identifier": f"{who}-{day}",
        "event_name": f"llm.{meter}",
        "customer": who,
        "timestamp": at(day).isoformat(),
        "value": str(tokens),
        "dimensions": {"model": model},
    }
    assert events_ingest(events=[event]).count("accepted") == 1
    events_rate_pending()


@pytest.fixture
def january(clock: time_machine.Traveller) -> Invoice:
    """The month above, its period closed and invoiced on Feb 1, revenue recognized;
    returns acme's January invoice."""
    catalog.load(CATALOG)
    acme, globex, initech = customer("acme"), customer("globex"), customer("initech")
    for subscriber in (acme, globex):
        subscription_start(customer=subscriber, plan=plan("ai"), actor="t")
    credit_grant_create(
        account=initech.account,
        amount="100",
        category="paid",
        actor="t",
        cost_basis=Money("0.01", "USD"),
        expires_at=at(20),
    )
    clock.move_to(at(2))
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_1k"), actor="t"
    )
    purchase_demo_pay(purchase=purchase, actor="t")

    _use(clock, 5, "acme", "input big", 200_000)
    _use(clock, 5, "globex", "input big", 100_000)
    _use(clock, 6, "acme", "output big", 40_000)
    _use(clock, 7, "acme", "input small", 2_000_000)
    _use(clock, 8, "acme", "output small", 500_000)
    clock.move_to(at(9))
    event_cancel(customer=acme, identifier="acme-8", reason="duplicate", actor="staff:ann")
    _use(clock, 10, "acme", "output small", 1_000_000)
    _use(clock, 12, "acme", "output big", 20_000)
    clock.move_to(at(20) + timedelta(hours=1, minutes=1))
    assert credit_grants_expire_due() == 1

    clock.move_to(datetime(2026, 2, 1, tzinfo=UTC))
    subscriptions_renew_due()
    clock.shift(timedelta(minutes=61))
    assert periods_close_due() == 2
    revenue_recognize_all()
    return Invoice.objects.get(customer=acme, kind="period")


def _row(report: MarginReport, meter: str, model: str, customer: str) -> MarginRow:
    (section,) = report.currencies
    (found,) = [
        r for r in section.rows if (r.meter, r.model, r.customer) == (meter, model, customer)
    ]
    return found


def _figures(row: MarginRow) -> tuple[Decimal | None, ...]:
    return (row.units, row.credits, row.revenue, row.cost, row.margin)


def test_it_reports_units_credits_revenue_cost_and_margin_by_meter_model_and_customer(
    january: Invoice,
) -> None:
    report = margin_report(month=JANUARY)
    (section,) = report.currencies
    assert section.currency == "USD"
    d = Decimal
    assert _figures(_row(report, "Input tokens", "big", "acme")) == (
        d(200_000),
        d(600),
        d(0),
        d("0.50"),
        d("-0.50"),
    )
    assert _row(report, "Input tokens", "big", "acme").margin_percent is None  # no revenue
    assert _figures(_row(report, "Input tokens", "big", "globex")) == (
        d(100_000),
        d(300),
        d(0),
        d("0.25"),
        d("-0.25"),
    )
    small_in = _row(report, "Input tokens", "small", "acme")
    assert _figures(small_in) == (d(2_000_000), d(300), d("1.50"), d("0.30"), d("1.20"))
    assert small_in.margin_percent == d(80)
    # B's 200 pack credits (1.00) and F's 300 overage credits (3.00)
    big_out = _row(report, "Output tokens", "big", "acme")
    assert _figures(big_out) == (d(60_000), d(900), d("4.00"), d("0.60"), d("3.40"))
    assert big_out.margin_percent == d(85)
    # E only: D was cancelled. 500 pack credits (2.50) and 100 overage credits (1.00)
    small_out = _row(report, "Output tokens", "small", "acme")
    assert _figures(small_out) == (d(1_000_000), d(600), d("3.50"), d("0.60"), d("2.90"))
    assert f"{small_out.margin_percent:.4f}" == "82.8571"

    assert [(r.meter, r.customer, r.revenue, r.cost) for r in section.other] == [
        ("Base fees", "acme", d("20.00"), d(0)),
        ("Base fees", "globex", d("20.00"), d(0)),
        ("Expired credits", "initech", d("1.00"), d(0)),
    ]
    total = section.total
    assert total.units is None  # input and output tokens are not added up
    assert _figures(total)[1:] == (d(2_700), d("50.00"), d("2.25"), d("47.75"))
    assert f"{total.margin_percent:.1f}" == "95.5"
    assert total.uncosted_events == 0


def test_its_totals_tie_to_the_revenue_report(
    january: Invoice, clock: time_machine.Traveller
) -> None:
    clock.move_to(at(2, month=2))
    overage = january.lines.get(kind=LineKind.OVERAGE)
    credit_note_issue(
        invoice=january,
        lines={overage.pk: Decimal("1.00")},
        reason="product_unsatisfactory",
        method="customer_credit",
        actor="staff:finance",
    )
    revenue_recognize_all()
    for month in (JANUARY, date(2026, 2, 1)):
        (section,) = margin_report(month=month).currencies
        recognized = revenue_report(month=month).recognized
        assert section.total.revenue == sum(recognized.values(), Decimal(0))
    (february,) = margin_report(month=date(2026, 2, 1)).currencies
    assert [(r.meter, r.customer, r.revenue) for r in february.rows] == [
        ("Credit notes", "acme", Decimal("-1.00"))
    ]


def test_it_groups_subtotals_by_meter_and_model(january: Invoice) -> None:
    (section,) = margin_report(month=JANUARY).currencies
    meters = section.meters
    assert [m.meter for m in meters] == ["Input tokens", "Output tokens"]
    big_in = meters[0].models[0]
    assert (big_in.model, [r.customer for r in big_in.rows]) == ("big", ["acme", "globex"])
    assert (big_in.total.units, big_in.total.cost) == (Decimal(300_000), Decimal("0.75"))
    assert (meters[0].total.revenue, meters[0].total.cost) == (Decimal("1.50"), Decimal("1.05"))
    assert (meters[1].total.revenue, meters[1].total.cost) == (Decimal("7.50"), Decimal("1.20"))


def test_a_cancelled_event_leaves_no_units_cost_or_revenue(january: Invoice) -> None:
    cancelled = EventRating.objects.get(event__identifier="acme-8")
    assert cancelled.cost == Decimal("0.30")  # rated with its cost, then cancelled
    (section,) = margin_report(month=JANUARY).currencies
    assert "Cancelled usage" not in [r.meter for r in section.other]  # 1.50 - 1.50
    assert section.total.cost == Decimal("2.25")  # A..G without D


def test_a_cancellation_in_the_next_month_is_shown_in_both_months(
    clock: time_machine.Traveller,
) -> None:
    """Consumed on Jan 31 from paid credits (1.50), cancelled on Feb 1: each month shows
    its part as cancelled usage, and each ties to the revenue report."""
    catalog.load(CATALOG)
    acme = customer("acme")
    subscription_start(customer=acme, plan=plan("ai"), actor="t")
    credit_grant_create(  # drawn before the included credits
        account=acme.account,
        amount="1000",
        category="paid",
        actor="t",
        priority=0,
        cost_basis=Money("0.005", "USD"),
    )
    _use(clock, 31, "acme", "input small", 2_000_000)  # 300 paid credits: 1.50
    clock.move_to(datetime(2026, 2, 1, 0, 30, tzinfo=UTC))
    event_cancel(customer=acme, identifier="acme-31", reason="duplicate", actor="staff:ann")
    revenue_recognize_all()
    for month, expected in ((JANUARY, Decimal("1.50")), (date(2026, 2, 1), Decimal("-1.50"))):
        (section,) = margin_report(month=month).currencies
        assert [(r.meter, r.revenue) for r in section.rows] == [("Cancelled usage", expected)]
        assert section.total.revenue == sum(revenue_report(month=month).recognized.values())
        assert section.total.cost == 0


TIERED = """
currency: USD
meters:
  - {code: input_tokens, event_name: llm.input, aggregation: sum, unit: tokens,
     dimensions: [model], display_name: Input tokens}
rate_cards:
  - code: tiered
    effective_from: "2026-01-01T00:00:00Z"
    rates:
      - meter: input_tokens
        match: {model: vol}
        per: 1000
        tiers_mode: volume
        tiers:
          - {up_to: 10000, credits: "2"}
          - {credits: "1"}
        cost: "0.001"
plans:
  - code: tiered
    name: Tiered
    interval: month
    base_fee: "0.00"
    included_credits: "1"
    rate_card: tiered
    overage: {policy: postpaid, price_per_credit: "0.01"}
"""


def test_a_tiered_rates_true_up_goes_to_its_meter_and_model(
    clock: time_machine.Traveller,
) -> None:
    """Volume tiers charge the running tier: 6,000 tokens at 2 (12 credits), 7,000 at 1
    (7) and 40,000 at 1 (40) from paid credits at $0.01: 0.59 in January. The close gives
    back 6 credits (53,000 tokens all at 1 = 53): -0.06 on Feb 1, to the same row."""
    catalog.load(TIERED)
    acme = customer("acme")
    subscription_start(customer=acme, plan=plan("tiered"), actor="t")
    credit_grant_create(
        account=acme.account,
        amount="1000",
        category="paid",
        actor="t",
        priority=0,
        cost_basis=Money("0.01", "USD"),
    )
    for day, tokens in ((5, 6_000), (6, 7_000), (7, 40_000)):
        _use(clock, day, "acme", "input vol", tokens)
    clock.move_to(datetime(2026, 2, 1, tzinfo=UTC))
    subscriptions_renew_due()
    clock.shift(timedelta(minutes=61))
    assert periods_close_due() == 1
    revenue_recognize_all()

    (january,) = margin_report(month=JANUARY).currencies
    assert [_figures(r) for r in january.rows] == [
        (Decimal(53_000), Decimal(59), Decimal("0.59"), Decimal("0.053"), Decimal("0.537"))
    ]
    (february,) = margin_report(month=date(2026, 2, 1)).currencies
    assert [(r.meter, r.model, r.revenue, r.cost) for r in february.rows] == [
        ("Input tokens", "vol", Decimal("-0.06"), Decimal(0))
    ]
    for month in (JANUARY, date(2026, 2, 1)):
        (section,) = margin_report(month=month).currencies
        assert section.total.revenue == sum(revenue_report(month=month).recognized.values())


def test_a_line_is_shared_by_credits_and_the_shares_add_up_to_it() -> None:
    shares = split(Decimal("1.00"), [Decimal(1), Decimal(1), Decimal(1)])
    assert shares == [Decimal("0.33333333"), Decimal("0.33333333"), Decimal("0.33333334")]
    assert sum(shares) == Decimal("1.00")
    assert split(Decimal("4.00"), [Decimal(100), Decimal(300)]) == [Decimal(1), Decimal(3)]


def test_the_model_is_the_model_dimension_else_the_dimensions() -> None:
    assert model_label("big", None) == "big"
    assert model_label(None, '{"region": "eu", "tier": "1"}') == "region=eu, tier=1"
    assert model_label(None, "{}") == "—"
    assert model_label(None, None) == "—"


def test_the_command_prints_the_rows_and_totals(january: Invoice) -> None:
    out = StringIO()
    call_command("margin_report", "--month", "2026-01", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "Margin for 2026-01 (USD)"
    assert lines[1].split() == [
        "Meter", "Model", "Customer", "Units", "Credits", "Revenue", "Cost", "Margin", "Margin", "%"
    ]  # fmt: skip
    assert lines[6].split() == [
        "Output", "tokens", "small", "acme", "1,000,000", "600", "3.50", "0.60", "2.90", "82.9%"
    ]  # fmt: skip
    assert lines[2].split()[-1] == "—"  # no revenue: no margin %
    assert lines[-1].split() == ["Total", "2,700", "50.00", "2.25", "47.75", "95.5%"]


def test_the_command_names_the_option_of_a_bad_month(db: None) -> None:
    with pytest.raises(CommandError, match="--month must look like 2026-11, not '2026-13'"):
        call_command("margin_report", "--month", "2026-13")


def _staff(role: str) -> Client:
    user = User.objects.create_user(role.lower().replace(" ", "_"), password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client


def test_the_staff_page_shows_the_rows_to_finance(january: Invoice) -> None:
    url = reverse("admin:staff_auditlog_report_margin")
    response = _staff("Finance").get(f"{url}?month=2026-01")
    assert response.status_code == 200
    assert response.context["report"].month == JANUARY
    page = response.content.decode()
    for shown in ("Input tokens", "Output tokens", "globex", "Base fees", "Expired credits"):
        assert shown in page
    assert "1,000,000" in page
    assert "$3.50" in page
    assert "82.9%" in page
    assert "$50.00" in page  # the total, as the revenue report's
    assert "$47.75" in page


def test_the_staff_page_is_refused_without_the_reporting_role(january: Invoice) -> None:
    url = reverse("admin:staff_auditlog_report_margin")
    assert _staff("Support").get(f"{url}?month=2026-01").status_code == 403


def test_the_reports_index_links_the_margin_report(db: None) -> None:
    response = _staff("Finance").get(reverse("admin:staff_auditlog_changelist"))
    assert (reverse("admin:staff_auditlog_report_margin"), "Margin report") in response.context[
        "reports"
    ]
