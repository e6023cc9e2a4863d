from __future__ import annotations

from decimal import Decimal

from django.test import Client
from djmoney.money import Money

from billing_portal.alerts.models import AlertSettings, AutoRecharge
from plans.models import CreditPack, Customer
from tests.billing_portal.portal.conftest import HTMX
from tests.billing_portal.portal.factories import member, subscribed_customer
from tests.plans.factories import load_demo_catalog


def test_it_shows_the_defaults(client_owner: Client) -> None:
    html = client_owner.get("/portal/controls/").content.decode()
    assert 'value="50, 80, 100"' in html
    assert "Monthly spend limit" in html
    assert "Auto-recharge" in html


def test_it_shows_the_plans_alert_defaults_without_saving_them(db: None) -> None:
    load_demo_catalog()
    starter = subscribed_customer("starter-co", "starter")  # low-balance alert below 200
    client = Client()
    client.force_login(member(starter))
    html = client.get("/portal/controls/").content.decode()
    assert 'value="50, 80, 100"' in html
    assert 'name="low_balance_credits" value="200' in html
    assert "your plan's defaults until you save your own" in html
    assert not AlertSettings.objects.filter(customer=starter).exists()


def test_an_invalid_save_keeps_the_plans_defaults(client_owner: Client, acme: Customer) -> None:
    response = client_owner.post("/portal/controls/alerts/", {"usage_thresholds": "lots"})
    assert response.status_code == 200
    assert not AlertSettings.objects.filter(customer=acme).exists()


def test_it_saves_alert_settings(client_owner: Client, acme: Customer) -> None:
    response = client_owner.post(
        "/portal/controls/alerts/",
        {
            "usage_thresholds": "90, 75,75",
            "low_balance_credits": "500",
            "recipients": "ops@acme.test, cfo@acme.test",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == "/portal/controls/"
    settings = AlertSettings.objects.get(customer=acme)
    assert settings.usage_thresholds == [75, 90]
    assert settings.low_balance_credits == Decimal(500)
    assert settings.recipients == ["ops@acme.test", "cfo@acme.test"]
    assert b"Alert settings saved." in client_owner.get("/portal/controls/").content


def test_it_shows_alert_errors_next_to_the_field(client_owner: Client, acme: Customer) -> None:
    response = client_owner.post(
        "/portal/controls/alerts/",
        {"usage_thresholds": "50, lots", "low_balance_credits": "-1", "recipients": "nobody"},
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "&#x27;lots&#x27; is not a whole percentage" in html
    assert 'id="id_low_balance_credits-error"' in html
    assert "&#x27;nobody&#x27; is not an e-mail address." in html
    assert "<html" in html
    assert not AlertSettings.objects.filter(customer=acme, low_balance_credits__isnull=False)


def test_it_answers_an_htmx_save_with_the_form_partial(client_owner: Client) -> None:
    response = client_owner.post(
        "/portal/controls/alerts/",
        {"usage_thresholds": "80", "low_balance_credits": "", "recipients": ""},
        **HTMX,
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="alerts"')
    assert "Saved." in html
    assert 'value="80"' in html
    assert "<html" not in html


def test_it_answers_an_invalid_htmx_save_with_errors_in_the_partial(client_owner: Client) -> None:
    response = client_owner.post(
        "/portal/controls/spend-limit/", {"spend_limit_credits": "abc"}, **HTMX
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="limit"')
    assert "Enter a number, such as 25,000 or 12.5." in html
    assert "Saved." not in html


def test_it_sets_and_clears_the_spend_limit(client_owner: Client, acme: Customer) -> None:
    response = client_owner.post("/portal/controls/spend-limit/", {"spend_limit_credits": "5000"})
    assert response.status_code == 302
    acme.refresh_from_db()
    assert acme.spend_limit_credits == Decimal(5000)
    client_owner.post("/portal/controls/spend-limit/", {"spend_limit_credits": ""})
    acme.refresh_from_db()
    assert acme.spend_limit_credits is None


def test_it_refuses_a_negative_spend_limit(client_owner: Client, acme: Customer) -> None:
    response = client_owner.post("/portal/controls/spend-limit/", {"spend_limit_credits": "-5"})
    assert response.status_code == 200
    assert b"Enter 0 credits or more." in response.content
    acme.refresh_from_db()
    assert acme.spend_limit_credits is None


def test_it_saves_auto_recharge(client_owner: Client, acme: Customer) -> None:
    response = client_owner.post(
        "/portal/controls/auto-recharge/",
        {
            "enabled": "on",
            "threshold_credits": "1000",
            "pack": CreditPack.objects.get(code="pack_10k").pk,
            "max_recharges_per_month": "2",
        },
    )
    assert response.status_code == 302
    recharge = AutoRecharge.objects.get(customer=acme)
    assert recharge.enabled
    assert recharge.threshold_credits == Decimal(1000)
    assert recharge.pack is not None and recharge.pack.code == "pack_10k"
    assert recharge.max_recharges_per_month == 2


def _recharge_form(**changes: str) -> dict[str, object]:
    return {
        "enabled": "on",
        "threshold_credits": "1000",
        "pack": CreditPack.objects.get(code="pack_10k").pk,
        "max_recharges_per_month": "3",
        **changes,
    }


def test_it_saves_and_clears_the_auto_recharge_money_cap(
    client_owner: Client, acme: Customer
) -> None:
    Customer.objects.filter(pk=acme.pk).update(currency="EUR")
    url = "/portal/controls/auto-recharge/"
    assert client_owner.get("/portal/controls/").status_code == 200  # creates the rule
    response = client_owner.post(url, _recharge_form(max_amount_per_month="60.00"))
    assert response.status_code == 302
    recharge = AutoRecharge.objects.get(customer=acme)
    assert recharge.max_amount_per_month == Money("60.00", "EUR")
    html = client_owner.get("/portal/controls/").content.decode()
    assert "At most this much spent a month (EUR)" in html
    assert 'name="max_amount_per_month" value="60.00"' in html

    client_owner.post(url, _recharge_form(max_amount_per_month=""))
    recharge.refresh_from_db()
    assert recharge.max_amount_per_month is None


def test_it_refuses_a_money_cap_that_is_not_a_positive_amount_in_cents(
    client_owner: Client, acme: Customer
) -> None:
    url = "/portal/controls/auto-recharge/"
    for amount, error in [
        ("-5", "Enter an amount greater than 0, or leave it empty for no money cap."),
        ("0", "Enter an amount greater than 0, or leave it empty for no money cap."),
        ("10.005", "Use at most 2 decimal places."),
    ]:
        response = client_owner.post(url, _recharge_form(max_amount_per_month=amount))
        assert response.status_code == 200
        assert error in response.content.decode()
        assert 'id="id_max_amount_per_month-error"' in response.content.decode()
    assert not AutoRecharge.objects.filter(customer=acme, enabled=True).exists()


def test_it_needs_a_pack_and_threshold_to_turn_on_auto_recharge(
    client_owner: Client, acme: Customer
) -> None:
    response = client_owner.post(
        "/portal/controls/auto-recharge/",
        {"enabled": "on", "threshold_credits": "", "pack": "", "max_recharges_per_month": "0"},
    )
    html = response.content.decode()
    assert "Required to turn on auto-recharge." in html
    assert "Choose the pack to buy." in html
    assert "Enter a whole number from 1 to 31." in html
    assert not AutoRecharge.objects.filter(customer=acme, enabled=True).exists()


def test_it_refuses_changes_from_a_viewer(viewer_client: Client, acme: Customer) -> None:
    assert viewer_client.get("/portal/controls/").status_code == 200
    for url, data in [
        ("/portal/controls/alerts/", {"usage_thresholds": "10"}),
        ("/portal/controls/spend-limit/", {"spend_limit_credits": "1"}),
        ("/portal/controls/auto-recharge/", {"max_recharges_per_month": "1"}),
    ]:
        assert viewer_client.post(url, data).status_code == 403
    acme.refresh_from_db()
    assert acme.spend_limit_credits is None
