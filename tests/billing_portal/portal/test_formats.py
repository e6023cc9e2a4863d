"""Numbers, money and errors in the portal as people read them, and the markup screen
readers rely on (described-by ids that exist, invalid fields, announcements, the current
page)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from djmoney.money import Money

from billing_portal.invoicing.models import PurchaseStatus
from billing_portal.invoicing.purchases import purchase_create
from billing_portal.portal.forms import AutoRechargeForm, PackBuyForm, SpendLimitForm
from billing_portal.portal.services import auto_recharge_get
from billing_portal.portal.templatetags.portal import money, price
from billing_portal.stripe.payments import purchase_demo_pay
from plans.models import CreditPack, Customer
from tests.billing_portal.portal.conftest import HTMX


def _ids(html: str) -> set[str]:
    return set(re.findall(r'\sid="([^"]+)"', html))


def _described_by_all_exist(html: str) -> None:
    ids = _ids(html)
    for value in re.findall(r'aria-describedby="([^"]+)"', html):
        for id_ in value.split():
            assert id_ in ids, f"aria-describedby names a missing #{id_}"


def test_money_shows_cents_with_the_currency_and_a_price_keeps_its_fraction() -> None:
    assert money(Money("25000", "USD")) == "$25,000.00"
    assert money(Money("1234.5", "EUR")) == "€1,234.50"
    assert money(None) == "—"
    assert price(Money("0.004", "USD")) == "$0.004"
    assert price(Money("0.00400000", "EUR")) == "€0.004"
    assert price(Money("2", "USD")) == "$2.00"


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("25,000", Decimal(25000)),
        (" 12.5 ", Decimal("12.5")),
        ("1,000,000.25", Decimal("1000000.25")),
    ],
)
def test_a_credit_amount_is_typed_as_people_write_it(typed: str, stored: Decimal) -> None:
    form = SpendLimitForm({"spend_limit_credits": typed})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["spend_limit_credits"] == stored


@pytest.mark.parametrize(
    ("typed", "error"),
    [
        ("1e99", "Enter at most 1,000,000,000,000 credits."),
        ("99999999999999999999999", "Enter at most 1,000,000,000,000 credits."),
        ("-5", "Enter 0 credits or more."),
        ("1.1234567", "Use at most 6 decimal places."),
        ("lots", "Enter a number, such as 25,000 or 12.5."),
        ("nan", "Enter a number, such as 25,000 or 12.5."),
    ],
)
def test_a_wrong_credit_amount_gets_one_plain_error(typed: str, error: str) -> None:
    form = SpendLimitForm({"spend_limit_credits": typed})
    assert not form.is_valid()
    assert form.errors["spend_limit_credits"] == [error]


def test_a_saved_amount_shows_without_storage_precision(db: None) -> None:
    form = SpendLimitForm(initial={"spend_limit_credits": Decimal("25000.000000")})
    html = str(form["spend_limit_credits"])
    assert 'value="25,000"' in html
    assert 'inputmode="decimal"' in html
    exact = SpendLimitForm(initial={"spend_limit_credits": Decimal("12.345600")})
    assert 'value="12.3456"' in str(exact["spend_limit_credits"]), "never rounded"


def test_the_spend_limit_says_what_it_is_worth_at_the_plans_price() -> None:
    price_each = Money("0.004", "USD")
    saved = SpendLimitForm(initial={"spend_limit_credits": Decimal(50000)}, price=price_each)
    assert "At your plan's $0.004 per credit, your limit of 50,000 credits is $200.00." in str(
        saved.fields["spend_limit_credits"].help_text
    )
    empty = SpendLimitForm(price=price_each)
    assert "10,000 credits are $40.00" in str(empty.fields["spend_limit_credits"].help_text)


def test_a_pack_says_when_its_credits_expire(acme: Customer) -> None:
    CreditPack.objects.create(
        code="forever",
        name="Forever",
        credits=Decimal(500),
        price=Money("5", "USD"),  # type: ignore[misc]
    )
    labels = [label for _, label in _choices(PackBuyForm().fields["pack"])]
    assert "10,000 credits for $35.00 (expire 365 days after purchase)" in labels
    assert "500 credits for $5.00 (never expire)" in labels
    recharge = AutoRechargeForm(instance=auto_recharge_get(customer=acme))
    assert any("expire 365 days" in str(label) for _, label in _choices(recharge.fields["pack"]))


def _choices(field: Any) -> list[tuple[Any, str]]:
    return list(field.choices)


def test_the_billing_page_lists_each_packs_expiry(client_owner: Client) -> None:
    html = client_owner.get("/portal/billing/").content.decode()
    box = html[html.index('id="pack-list"') :]
    assert '<th scope="row">10,000 credits</th><td class="num">$35.00</td>' in box
    assert "365 days after purchase" in box


def test_checkout_says_when_the_pack_expires(client_owner: Client, acme: Customer) -> None:
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="test"
    )
    html = client_owner.get(f"/portal/billing/checkout/{purchase.pk}/").content.decode()
    lapses = (timezone.now() + timedelta(days=365)).strftime("%-d %b %Y")
    assert "expire 365 days after purchase" in html
    assert f"unused credits lapse on <strong>{lapses}</strong>" in html
    assert "Pay $35.00" in html


def test_the_dashboard_shows_usage_and_the_spend_limit_in_money(
    client_owner: Client, acme: Customer
) -> None:
    Customer.objects.filter(pk=acme.pk).update(spend_limit_credits=Decimal(50000))
    html = client_owner.get("/portal/").content.decode()
    assert '<small id="spend-limit">limit 50,000 ($200.00)</small>' in html
    assert '<strong id="price-per-credit">$0.004</strong>' in html
    table = html[html.index('id="usage-table"') :]
    # The factory's event: 160,000 large output tokens = 2,400 credits = $9.60.
    assert '<th scope="col" class="num">Cost</th>' in table
    assert '<td class="num">2,400</td><td class="num">$9.60</td>' in table
    assert "large · output" in table


def test_the_dashboard_shows_no_cost_column_without_a_price(db: None) -> None:
    from tests.billing_portal.portal.factories import member, subscribed_customer, usage
    from tests.plans.factories import load_demo_catalog

    load_demo_catalog()
    team = subscribed_customer("team-co", "team")  # soft limit: no price per credit
    usage(team, "evt-1")
    client = Client()
    client.force_login(member(team))
    html = client.get("/portal/").content.decode()
    assert ">Cost</th>" not in html
    assert "price-per-credit" not in html


def test_controls_wire_help_and_errors_to_their_fields(client_owner: Client) -> None:
    html = client_owner.get("/portal/controls/").content.decode()
    _described_by_all_exist(html)
    assert 'aria-describedby="id_spend_limit_credits_helptext"' in html

    response = client_owner.post("/portal/controls/spend-limit/", {"spend_limit_credits": "1e99"})
    html = response.content.decode()
    _described_by_all_exist(html)
    field = re.search(r"<input[^>]*name=\"spend_limit_credits\"[^>]*>", html)
    assert field is not None
    assert 'aria-invalid="true"' in field.group(0)
    assert "autofocus" in field.group(0), "a page load puts the cursor on the field at fault"
    assert (
        'aria-describedby="id_spend_limit_credits_helptext id_spend_limit_credits-error"'
        in field.group(0)
    )
    assert "no more than 19 digits" not in html
    assert "Ensure this value" not in html


def test_an_htmx_save_announces_its_result_out_of_band(client_owner: Client) -> None:
    saved = client_owner.post(
        "/portal/controls/spend-limit/", {"spend_limit_credits": "5,000"}, **HTMX
    ).content.decode()
    assert '<button type="submit" id="limit-save">' in saved, "htmx gives focus back by id"
    assert '<div id="announcer" hx-swap-oob="innerHTML">Spend limit saved.</div>' in saved

    refused = client_owner.post(
        "/portal/controls/alerts/", {"usage_thresholds": "lots"}, **HTMX
    ).content.decode()
    assert (
        '<div id="announcer" hx-swap-oob="innerHTML">Alert settings not saved. '
        "Usage alerts (% of included credits): &#x27;lots&#x27; is not a whole percentage"
    ) in refused
    assert 'aria-invalid="true"' in refused


def test_auto_recharge_says_which_card_it_charges(
    client_owner: Client, acme: Customer, settings: Any
) -> None:
    settings.BILLING_DEMO_PAYMENTS = True
    html = client_owner.get("/portal/controls/").content.decode()
    assert "Demo mode: no card is charged" in html

    settings.STRIPE_API_KEY = "sk_test_portal"
    html = client_owner.get("/portal/controls/").content.decode()
    assert "No card is saved yet: buy a pack once" in html

    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="test"
    )
    type(purchase).objects.filter(pk=purchase.pk).update(
        status=PurchaseStatus.PAID, paid_at=timezone.now(), stripe_payment_intent_id="pi_1"
    )
    html = client_owner.get("/portal/controls/").content.decode()
    paid_on = timezone.now().strftime("%-d %b %Y")
    assert f"charges the card you saved when you paid for 10,000 credits on {paid_on}" in html


def test_the_navigation_marks_the_current_page_and_offers_a_skip_link(
    client_owner: Client, acme: Customer, settings: Any
) -> None:
    html = client_owner.get("/portal/billing/").content.decode()
    assert '<a class="skip" href="#main">Skip to content</a>' in html
    assert '<main id="main" tabindex="-1">' in html
    assert html.count('aria-current="page"') == 1
    assert '<a href="/portal/billing/" aria-current="page">Billing</a>' in html
    settings.BILLING_DEMO_PAYMENTS = True
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="test"
    )
    invoice_page = client_owner.get(f"/portal/billing/invoices/{purchase.invoice.pk}/")
    assert '<a href="/portal/billing/" aria-current="page">Billing</a>' in invoice_page.text


def test_an_invoice_shows_its_date_who_it_bills_and_prints(
    client_owner: Client, acme: Customer, settings: Any
) -> None:
    settings.BILLING_DEMO_PAYMENTS = True
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="test"
    )
    purchase_demo_pay(purchase=purchase, actor="test")
    invoice = purchase.invoice
    invoice.refresh_from_db()
    html = client_owner.get(f"/portal/billing/invoices/{invoice.pk}/").content.decode()
    assert invoice.issued_at is not None
    assert f'<dd id="issued-on">{invoice.issued_at:%-d %b %Y}</dd>' in html
    assert '<dd id="bill-to">Acme<br>billing@acme.test<br>' in html
    assert "data-print hidden>Print or save as PDF</button>" in html
    assert '<td class="num">$35.00</td>' in html
    css = (Path(django_settings.BASE_DIR) / "static" / "portal" / "portal.css").read_text()
    print_rules = css[css.index("@media print") :]
    assert ".top" in print_rules and ".no-print" in print_rules
