"""A failed invoice payment, end to end over HTTP: Stripe's signed webhooks to the live
server, then the API, authorizations, alerts, outgoing webhooks and the portal.

The invoice is synced to the fake Stripe; each webhook carries that invoice as Stripe
sends it after an attempt (attempt_count, next_payment_attempt, the payment intent's
error). The plan "strict" denies 3 days after the first failure; "pro" allows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from django.core import mail
from django.test import Client
from django.utils import timezone

from billing_portal.alerts.models import Alert
from billing_portal.invoicing.models import Invoice
from billing_portal.outbound.models import OutboundEvent, WebhookDelivery
from billing_portal.stripe import sync
from plans import catalog
from plans.models import Customer, Subscription
from tests.billing_portal.api.conftest import http_api_environment  # noqa: F401 (fixture)
from tests.billing_portal.api.http_support import Api
from tests.billing_portal.outbound.conftest import Receiver, receiver  # noqa: F401 (fixture)
from tests.billing_portal.portal.factories import member
from tests.billing_portal.stripe.factories import period_invoice
from tests.billing_portal.stripe.fake_stripe import WEBHOOK_SECRET, FakeStripe, event, sign
from tests.plans.factories import DEMO_CATALOG, subscription_recent

pytestmark = pytest.mark.usefixtures("webhook_secret")

STRICT = """  - code: strict
    name: Strict
    interval: month
    base_fee: "49.00"
    included_credits: "20000"
    rate_card: standard
    overage: {policy: postpaid, price_per_credit: "0.004"}
    past_due_policy: {deny_after_days: 3}
"""
DECLINED = "Your card was declined."


@pytest.fixture
def api(live_server: Any, http_api_environment: None) -> Api:  # noqa: F811
    from plans.apikeys import api_key_create

    catalog.load(DEMO_CATALOG.read_text().replace("plans:\n", "plans:\n" + STRICT, 1))
    return Api(
        base_url=live_server.url,
        all=api_key_create(name="backend", scopes=["ingest", "read", "write"])[1],
        read=api_key_create(name="dashboard", scopes=["read"])[1],
        write=api_key_create(name="admin", scopes=["write"])[1],
        ingest=api_key_create(name="gateway", scopes=["ingest"])[1],
    )


@pytest.fixture
def hooks(receiver: Receiver) -> Receiver:  # noqa: F811
    """An operator endpoint taking the payment events and alerts."""
    receiver.endpoint(event_types=["invoice.payment_failed", "invoice.paid", "alert.triggered"])
    return receiver


def _subscribed(plan_code: str) -> Subscription:
    return subscription_recent(plan_code=plan_code)


def _synced(customer: Customer) -> Invoice:
    return sync.invoice_sync(invoice=period_invoice(customer))


def _failed(
    fake: FakeStripe,
    invoice: Invoice,
    attempt: int,
    *,
    created: datetime | None = None,
    next_attempt: datetime | None = None,
) -> dict[str, Any]:
    """invoice.payment_failed as Stripe sends it after attempt number ``attempt``."""
    obj = dict(
        fake.invoices[invoice.stripe_invoice_id],
        attempted=True,
        attempt_count=attempt,
        next_payment_attempt=int(next_attempt.timestamp()) if next_attempt else None,
        payment_intent={
            "id": "pi_fake_declined",
            "object": "payment_intent",
            "status": "requires_payment_method",
            "last_payment_error": {"code": "card_declined", "message": DECLINED},
        },
    )
    failed = event("invoice.payment_failed", obj)
    if created is not None:
        failed["created"] = int(created.timestamp())
    return failed


def _paid(fake: FakeStripe, invoice: Invoice) -> dict[str, Any]:
    return event("invoice.paid", fake.invoice_mark_paid(invoice.stripe_invoice_id))


def _send(api: Api, news: dict[str, Any]) -> dict[str, Any]:
    """POST the event to the live server, signed by the stripe library as Stripe signs."""
    body = json.dumps(news)
    response = requests.post(
        f"{api.base_url}/webhooks/stripe",
        data=body,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": sign(body, WEBHOOK_SECRET),
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _authorize(api: Api, identifier: str, *, hold: bool = True) -> dict[str, Any]:
    response = api.post(
        "/authorizations",
        {"customer": "acme", "identifier": identifier, "credits": "10", "hold": hold},
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _decision(api: Api, identifier: str, *, hold: bool = True) -> tuple[str, str | None]:
    answer = _authorize(api, identifier, hold=hold)
    return answer["decision"], answer["reason"]


def _seconds(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def _back_in_time(subscription: Subscription, invoice: Invoice, delta: timedelta) -> None:
    """As if the first failure had happened ``delta`` earlier (no sleeping in tests)."""
    current = Subscription.objects.get(pk=subscription.pk).past_due_since
    assert current is not None
    Subscription.objects.filter(pk=subscription.pk).update(past_due_since=current - delta)
    Invoice.objects.filter(pk=invoice.pk).update(payment_failed_at=current - delta)


def _payment_alerts(customer: Customer) -> list[Alert]:
    return list(Alert.objects.filter(customer=customer, kind="payment_failed").order_by("pk"))


def _published(kind: str) -> list[OutboundEvent]:
    return list(OutboundEvent.objects.filter(type=kind).order_by("pk"))


# --- recording a failure ---------------------------------------------------------------


def test_a_failed_payment_is_recorded_on_the_invoice_and_the_subscription(
    api: Api, fake: FakeStripe
) -> None:
    subscription = _subscribed("strict")
    invoice = _synced(subscription.customer)
    failed_at = _seconds(timezone.now() - timedelta(minutes=5))
    next_attempt = _seconds(timezone.now() + timedelta(days=3))

    answer = _send(api, _failed(fake, invoice, 1, created=failed_at, next_attempt=next_attempt))

    assert answer == {"received": True, "duplicate": False}
    body = api.ok(f"/invoices/{invoice.pk}")
    assert body["status"] == "open"
    assert (body["payment_attempts"], body["payment_error"]) == (1, DECLINED)
    assert datetime.fromisoformat(body["payment_failed_at"]) == failed_at
    assert datetime.fromisoformat(body["next_payment_attempt_at"]) == next_attempt
    assert (
        body["hosted_invoice_url"] == fake.invoices[invoice.stripe_invoice_id]["hosted_invoice_url"]
    )
    assert body["amount_due"] == "65.00"
    shown = api.ok(f"/subscriptions/{subscription.pk}")
    assert shown["status"] == "past_due"
    assert datetime.fromisoformat(shown["past_due_since"]) == failed_at
    listed = api.ok("/subscriptions", customer="acme", status="past_due")["data"]
    assert [s["id"] for s in listed] == [str(subscription.pk)]
    assert api.ok("/subscriptions", customer="acme", status="active")["data"] == []


def test_a_replayed_webhook_adds_no_attempt_alert_or_delivery(
    api: Api, fake: FakeStripe, hooks: Receiver
) -> None:
    subscription = _subscribed("strict")
    invoice = _synced(subscription.customer)
    first = _failed(fake, invoice, 1)

    assert _send(api, first)["duplicate"] is False
    assert _send(api, first)["duplicate"] is True
    # The same attempt told again in another event (an older retry arriving late) counts
    # nothing either.
    assert _send(api, _failed(fake, invoice, 1))["duplicate"] is False

    assert api.ok(f"/invoices/{invoice.pk}")["payment_attempts"] == 1
    assert len(_payment_alerts(subscription.customer)) == 1
    assert len(_published("invoice.payment_failed")) == 1
    assert [e["type"] for e in hooks.events()].count("invoice.payment_failed") == 1
    assert len(mail.outbox) == 1

    _send(api, _failed(fake, invoice, 2))
    assert api.ok(f"/invoices/{invoice.pk}")["payment_attempts"] == 2
    assert len(_payment_alerts(subscription.customer)) == 2
    assert [e["type"] for e in hooks.events()].count("invoice.payment_failed") == 2


def test_later_attempts_keep_the_first_failure_time(api: Api, fake: FakeStripe) -> None:
    subscription = _subscribed("strict")
    invoice = _synced(subscription.customer)
    first = _seconds(timezone.now() - timedelta(days=2))
    _send(api, _failed(fake, invoice, 1, created=first))
    _send(api, _failed(fake, invoice, 2, created=first + timedelta(days=1)))

    body = api.ok(f"/invoices/{invoice.pk}")
    assert body["payment_attempts"] == 2
    assert datetime.fromisoformat(body["payment_failed_at"]) == first
    assert body["next_payment_attempt_at"] is None  # Stripe plans no further attempt
    past_due = api.ok(f"/subscriptions/{subscription.pk}")["past_due_since"]
    assert datetime.fromisoformat(past_due) == first


def test_an_error_message_from_the_invoice_or_a_plain_default(api: Api, fake: FakeStripe) -> None:
    subscription = _subscribed("strict")
    invoice = _synced(subscription.customer)
    news = _failed(fake, invoice, 1)
    obj = news["data"]["object"]
    obj["payment_intent"] = "pi_fake_not_expanded"
    obj["last_finalization_error"] = {"message": "The customer has no payment method."}
    _send(api, news)
    assert api.ok(f"/invoices/{invoice.pk}")["payment_error"] == (
        "The customer has no payment method."
    )

    other = _synced(subscription.customer)
    plain = _failed(fake, other, 1)
    plain["data"]["object"]["payment_intent"] = None
    _send(api, plain)
    assert api.ok(f"/invoices/{other.pk}")["payment_error"] == "The payment could not be made."


# --- access ----------------------------------------------------------------------------


def test_deny_after_days_allows_inside_the_grace_denies_after_and_paying_restores_at_once(
    api: Api, fake: FakeStripe
) -> None:
    subscription = _subscribed("strict")
    invoice = _synced(subscription.customer)
    assert _decision(api, "before") == ("allow", None)

    _send(api, _failed(fake, invoice, 1))
    assert _decision(api, "day-0") == ("allow", None)
    _back_in_time(subscription, invoice, timedelta(days=3) - timedelta(minutes=1))
    assert _decision(api, "day-3-minus-a-minute") == ("allow", None)

    _back_in_time(subscription, invoice, timedelta(minutes=1))
    denied = _authorize(api, "day-3")
    assert (denied["decision"], denied["reason"], denied["status"]) == (
        "deny",
        "payment_overdue",
        None,
    )
    assert _decision(api, "day-3-dry", hold=False) == ("deny", "payment_overdue")

    _send(api, _paid(fake, invoice))
    assert _decision(api, "paid") == ("allow", None)
    shown = api.ok(f"/subscriptions/{subscription.pk}")
    assert (shown["status"], shown["past_due_since"]) == ("active", None)
    body = api.ok(f"/invoices/{invoice.pk}")
    assert (body["status"], body["payment_attempts"], body["next_payment_attempt_at"]) == (
        "paid",
        1,
        None,
    )


def test_a_failure_stripe_reports_late_counts_the_grace_from_when_it_happened(
    api: Api, fake: FakeStripe
) -> None:
    subscription = _subscribed("strict")
    invoice = _synced(subscription.customer)
    _send(api, _failed(fake, invoice, 1, created=timezone.now() - timedelta(days=3, minutes=1)))
    assert _decision(api, "late") == ("deny", "payment_overdue")


def test_policy_allow_keeps_allowing_while_past_due(api: Api, fake: FakeStripe) -> None:
    subscription = _subscribed("pro")
    invoice = _synced(subscription.customer)
    _send(api, _failed(fake, invoice, 1))
    _back_in_time(subscription, invoice, timedelta(days=90))

    assert api.ok(f"/subscriptions/{subscription.pk}")["status"] == "past_due"
    assert _decision(api, "held") == ("allow", None)
    assert _decision(api, "dry", hold=False) == ("allow", None)


def test_it_stays_past_due_until_the_last_failed_invoice_is_paid_or_voided(
    api: Api, fake: FakeStripe
) -> None:
    subscription = _subscribed("strict")
    first, second = _synced(subscription.customer), _synced(subscription.customer)
    _send(api, _failed(fake, first, 1, created=timezone.now() - timedelta(days=5)))
    _send(api, _failed(fake, second, 1, created=timezone.now() - timedelta(days=1)))
    assert _decision(api, "both") == ("deny", "payment_overdue")

    _send(api, _paid(fake, first))
    # The second failure is a day old: inside its grace, so allowed, and still past due.
    assert _decision(api, "one-left") == ("allow", None)
    assert api.ok(f"/subscriptions/{subscription.pk}")["status"] == "past_due"

    voided = fake.invoices[second.stripe_invoice_id]
    _send(api, event("invoice.voided", dict(voided, status="void")))
    assert api.ok(f"/subscriptions/{subscription.pk}")["status"] == "active"


def test_a_failure_after_the_payment_changes_nothing(api: Api, fake: FakeStripe) -> None:
    subscription = _subscribed("strict")
    invoice = _synced(subscription.customer)
    late = _failed(fake, invoice, 1, created=timezone.now() - timedelta(days=10))
    _send(api, _paid(fake, invoice))
    _send(api, late)

    assert api.ok(f"/invoices/{invoice.pk}")["payment_attempts"] == 0
    assert api.ok(f"/subscriptions/{subscription.pk}")["status"] == "active"
    assert _decision(api, "after") == ("allow", None)


# --- telling the customer and the operator ---------------------------------------------


def test_the_customer_is_alerted_and_the_operator_gets_invoice_payment_failed(
    api: Api, fake: FakeStripe, hooks: Receiver
) -> None:
    subscription = _subscribed("strict")
    customer = subscription.customer
    invoice = _synced(customer)
    failed_at = _seconds(timezone.now() - timedelta(hours=1))
    next_attempt = _seconds(timezone.now() + timedelta(days=2))
    hosted = fake.invoices[invoice.stripe_invoice_id]["hosted_invoice_url"]
    _send(api, _failed(fake, invoice, 1, created=failed_at, next_attempt=next_attempt))

    (alert,) = _payment_alerts(customer)
    paused_at = failed_at + timedelta(days=3)
    assert alert.threshold == f"invoice-{invoice.pk}-attempt-1"
    assert alert.message == (
        f"Your payment of $65.00 for invoice {invoice.number} failed: Your card was declined "
        f"(attempt 1; unpaid since {failed_at:%-d %b %Y %H:%M} UTC). Pay it here: {hosted} "
        f"We will try again on {next_attempt:%-d %b %Y %H:%M} UTC. Requests will be refused "
        f"from {paused_at:%-d %b %Y %H:%M} UTC until it is paid."
    )
    assert alert.data["attempts"] == 1 and alert.data["hosted_invoice_url"] == hosted
    (email,) = mail.outbox
    assert email.subject == f"[{customer.name}] Payment failed"
    assert hosted in email.body and email.to == [customer.email]

    payloads = {e["type"]: e for e in hooks.events()}
    assert set(payloads) == {"invoice.payment_failed", "alert.triggered"}
    assert payloads["alert.triggered"]["data"]["kind"] == "payment_failed"
    failed = payloads["invoice.payment_failed"]
    assert failed["customer"] == "acme"
    assert failed["data"] == {
        "id": invoice.pk,
        "number": invoice.number,
        "customer": "acme",
        "amount_due": "65.00",
        "currency": "USD",
        "attempts": 1,
        "payment_failed_at": _rfc3339(failed_at),
        "payment_error": DECLINED,
        "next_payment_attempt_at": _rfc3339(next_attempt),
        "hosted_invoice_url": hosted,
        "past_due_since": _rfc3339(failed_at),
        "access_paused_at": _rfc3339(paused_at),
    }
    assert hooks.refused == []  # every body carried a valid signature

    _send(api, _paid(fake, invoice))
    paid = [e for e in hooks.events() if e["type"] == "invoice.paid"]
    assert [(e["data"]["number"], e["data"]["total"], e["data"]["currency"]) for e in paid] == [
        (invoice.number, "65.00", "USD")
    ]
    assert WebhookDelivery.objects.filter(event__type="invoice.paid").count() == 1


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_the_portal_shows_the_banner_with_the_link_to_pay_until_it_is_paid(
    api: Api, fake: FakeStripe
) -> None:
    subscription = _subscribed("strict")
    customer = subscription.customer
    invoice = _synced(customer)
    portal = Client()
    portal.force_login(member(customer))
    hosted = fake.invoices[invoice.stripe_invoice_id]["hosted_invoice_url"]
    assert 'id="past-due-banner"' not in portal.get("/portal/").content.decode()

    _send(api, _failed(fake, invoice, 1))

    for page in ("/portal/", "/portal/billing/", "/portal/notifications/"):
        html = portal.get(page).content.decode()
        assert 'id="past-due-banner"' in html, page
        assert f'<a href="{hosted}" rel="noopener" id="past-due-pay">Pay now</a>' in html
        assert invoice.number in html and "$65.00" in html
        assert "New requests will be refused from" in html
    detail = portal.get(f"/portal/billing/invoices/{invoice.pk}/").content.decode()
    assert "1 failed attempt, the first on" in detail and DECLINED in detail

    _back_in_time(subscription, invoice, timedelta(days=3))
    assert "New requests are refused until it is paid." in portal.get("/portal/").content.decode()

    _send(api, _paid(fake, invoice))
    assert 'id="past-due-banner"' not in portal.get("/portal/").content.decode()
    detail = portal.get(f"/portal/billing/invoices/{invoice.pk}/").content.decode()
    assert "Paid on" in detail
