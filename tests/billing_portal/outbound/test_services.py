"""Publishing, signing, sending and retrying outgoing webhooks, over real HTTP."""

from __future__ import annotations

import json
import socket
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from billing_portal.outbound import services, tasks
from billing_portal.outbound.models import (
    DeliveryStatus,
    EventType,
    OutboundEvent,
    WebhookDelivery,
    WebhookEndpoint,
)
from billing_portal.outbound.services import (
    EventDraft,
    SignatureError,
    event_publish,
    events_publish,
    signature_header,
    signature_verify,
)
from plans.models import Customer
from tests.billing_portal.outbound.conftest import Receiver
from tests.plans.factories import customer

pytestmark = pytest.mark.django_db

ALERT = {"alert": "usage_80", "threshold": Decimal("0.8"), "used": Decimal("16000.5")}


@pytest.fixture
def acme() -> Customer:
    return customer()


def _delivery(event: OutboundEvent) -> WebhookDelivery:
    return WebhookDelivery.objects.get(event=event)


def _log(delivery: WebhookDelivery) -> list[int | None]:
    return list(delivery.attempt_log.order_by("number").values_list("status_code", flat=True))


# --- publishing -------------------------------------------------------------------------


def test_it_delivers_only_to_enabled_endpoints_subscribed_to_the_type(acme: Customer) -> None:
    everything = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/all")
    alerts = WebhookEndpoint.objects.create(
        url="http://127.0.0.1:9/alerts", event_types=[EventType.ALERT_TRIGGERED]
    )
    invoices = WebhookEndpoint.objects.create(
        url="http://127.0.0.1:9/invoices", event_types=[EventType.INVOICE_FINALIZED]
    )
    WebhookEndpoint.objects.create(url="http://127.0.0.1:9/off", enabled=False)

    event = event_publish(type="alert.triggered", data=ALERT, customer=acme)

    endpoints = set(event.deliveries.values_list("endpoint", flat=True))
    assert endpoints == {everything.pk, alerts.pk}
    assert not invoices.deliveries.exists()


def test_many_events_published_at_once_go_each_to_the_endpoints_of_its_type(
    acme: Customer, django_capture_on_commit_callbacks: Any, django_assert_max_num_queries: Any
) -> None:
    everything = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/all")
    alerts = WebhookEndpoint.objects.create(
        url="http://127.0.0.1:9/alerts", event_types=[EventType.ALERT_TRIGGERED]
    )
    invoices = WebhookEndpoint.objects.create(
        url="http://127.0.0.1:9/invoices", event_types=[EventType.INVOICE_FINALIZED]
    )
    WebhookEndpoint.objects.create(url="http://127.0.0.1:9/off", enabled=False)
    drafts = [
        EventDraft(type="alert.triggered", data=ALERT, customer=acme),
        EventDraft(type="balance.depleted", data={"available": Decimal(0)}),
        EventDraft(type="invoice.finalized", data={"number": "INV-1"}, customer=acme),
        EventDraft(type="invoice.finalized", data={"number": "INV-2"}, customer=acme),
    ]

    # The events, the endpoints and the deliveries: one statement each, in a savepoint.
    with (
        django_capture_on_commit_callbacks(execute=False) as callbacks,
        django_assert_max_num_queries(5),
    ):
        events = events_publish(drafts)

    assert [(e.type, e.data) for e in events] == [
        ("alert.triggered", {"alert": "usage_80", "threshold": "0.8", "used": "16000.5"}),
        ("balance.depleted", {"available": "0"}),
        ("invoice.finalized", {"number": "INV-1"}),
        ("invoice.finalized", {"number": "INV-2"}),
    ]
    assert len({e.public_id for e in events}) == 4
    deliveries = {
        (e.type, e.data.get("number"), endpoint)
        for e in events
        for endpoint in e.deliveries.values_list("endpoint", flat=True)
    }
    assert deliveries == {
        ("alert.triggered", None, everything.pk),
        ("alert.triggered", None, alerts.pk),
        ("balance.depleted", None, everything.pk),
        ("invoice.finalized", "INV-1", everything.pk),
        ("invoice.finalized", "INV-1", invoices.pk),
        ("invoice.finalized", "INV-2", everything.pk),
        ("invoice.finalized", "INV-2", invoices.pk),
    }
    assert len(callbacks) == len(deliveries)  # one send per delivery, after commit


def test_it_stores_money_and_credits_as_strings(acme: Customer) -> None:
    event = event_publish(type="balance.depleted", data={"available": Decimal("0.000000")})
    event.refresh_from_db()
    assert event.data == {"available": "0.000000"}
    assert event.public_id.startswith("evt_")


def test_it_refuses_floats_and_unknown_types() -> None:
    with pytest.raises(TypeError, match="floats"):
        event_publish(type="balance.depleted", data={"available": 0.1})
    with pytest.raises(ValueError, match="unknown"):
        event_publish(type="balance.topped_up", data={})
    assert not OutboundEvent.objects.exists()


def test_it_queues_one_send_per_delivery_after_commit(
    acme: Customer, django_capture_on_commit_callbacks: Any
) -> None:
    WebhookEndpoint.objects.create(url="http://127.0.0.1:9/a")
    WebhookEndpoint.objects.create(url="http://127.0.0.1:9/b")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        event_publish(type="alert.triggered", data=ALERT, customer=acme)
    assert len(callbacks) == 2


# --- signatures -------------------------------------------------------------------------


def test_it_accepts_its_own_signature() -> None:
    header = signature_header(payload=b"{}", secret="whsec_x", timestamp=int(time.time()))
    signature_verify(payload=b"{}", header=header, secret="whsec_x")


@pytest.mark.parametrize(
    ("payload", "secret", "age", "message"),
    [
        (b'{"x":1}', "whsec_x", 0, "no signature matches"),
        (b"{}", "whsec_other", 0, "no signature matches"),
        (b"{}", "whsec_x", 301, "outside the tolerance"),
        (b"{}", "whsec_x", -301, "outside the tolerance"),
    ],
)
def test_it_refuses_a_changed_body_another_secret_or_a_stale_timestamp(
    payload: bytes, secret: str, age: int, message: str
) -> None:
    header = signature_header(payload=b"{}", secret="whsec_x", timestamp=int(time.time()) - age)
    with pytest.raises(SignatureError, match=message):
        signature_verify(payload=payload, header=header, secret=secret)


@pytest.mark.parametrize("header", ["", "v1=abc", "t=123", "t=abc,v1=abc"])
def test_it_refuses_a_malformed_header(header: str) -> None:
    with pytest.raises(SignatureError):
        signature_verify(payload=b"{}", header=header, secret="whsec_x")


def test_the_receiver_refuses_a_request_signed_with_another_secret(
    receiver: Receiver, acme: Customer
) -> None:
    receiver.endpoint()
    receiver.secret = "whsec_not_the_endpoints"
    event = event_publish(type="alert.triggered", data=ALERT, customer=acme)

    attempt = services.delivery_attempt(delivery_id=_delivery(event).pk)

    assert attempt is not None and attempt.status_code == 400
    assert receiver.refused == ["no signature matches the payload"]
    assert receiver.bodies == []


# --- sending and retrying ---------------------------------------------------------------


@pytest.mark.usefixtures("no_backoff")
def test_it_retries_until_the_receiver_answers_2xx(receiver: Receiver, acme: Customer) -> None:
    receiver.endpoint()
    receiver.codes = [500, 500]
    event = event_publish(type="alert.triggered", data=ALERT, customer=acme)
    delivery = _delivery(event)

    codes = [tasks.delivery_send(delivery.pk) for _ in range(4)]

    assert codes == [500, 500, 200, None]  # the fourth run finds nothing to do
    assert len(receiver.bodies) == 3
    assert len(set(receiver.bodies)) == 1  # the same event each time
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (
        DeliveryStatus.SUCCEEDED,
        3,
        200,
    )
    assert delivery.next_attempt_at is None
    assert _log(delivery) == [500, 500, 200]
    first = delivery.attempt_log.get(number=1)
    assert first.response_body == "x" * 1024


def test_it_sends_the_documented_body_and_headers(receiver: Receiver, acme: Customer) -> None:
    receiver.endpoint()
    event = event_publish(type="alert.triggered", data=ALERT, customer=acme)

    services.delivery_attempt(delivery_id=_delivery(event).pk)

    [body] = receiver.events()
    assert body == {
        "id": event.public_id,
        "type": "alert.triggered",
        "created": services.rfc3339(event.created_at),
        "customer": "acme",
        "data": {"alert": "usage_80", "threshold": "0.8", "used": "16000.5"},
    }
    assert body["created"].endswith("Z")
    [headers] = receiver.headers
    assert headers["Billing-Event-Id"] == event.public_id
    assert headers["Billing-Event-Type"] == "alert.triggered"
    assert headers["Content-Type"] == "application/json"


def test_it_waits_for_the_back_off_before_trying_again(
    receiver: Receiver, acme: Customer, settings: Any
) -> None:
    settings.OUTBOUND_WEBHOOK_BACKOFF_SECONDS = 30
    receiver.endpoint()
    receiver.codes = [503, 503]
    delivery = _delivery(event_publish(type="alert.triggered", data=ALERT, customer=acme))

    before = timezone.now()
    services.delivery_attempt(delivery_id=delivery.pk)
    assert services.delivery_attempt(delivery_id=delivery.pk) is None  # not due yet

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.next_attempt_at is not None
    assert delivery.next_attempt_at >= before + timedelta(seconds=30)
    assert services.backoff(2) == timedelta(seconds=60)
    assert services.backoff(30) == services.MAX_BACKOFF
    assert len(receiver.bodies) == 1


@pytest.mark.usefixtures("no_backoff")
def test_it_logs_connection_errors_and_gives_up_after_the_last_attempt(acme: Customer) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    WebhookEndpoint.objects.create(url=f"http://127.0.0.1:{port}/gone")
    delivery = _delivery(event_publish(type="alert.triggered", data=ALERT, customer=acme))

    for _ in range(services.MAX_ATTEMPTS + 1):
        services.delivery_attempt(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, services.MAX_ATTEMPTS)
    assert _log(delivery) == [None] * services.MAX_ATTEMPTS
    assert "ConnectionError" in delivery.attempt_log.get(number=1).error


def test_it_keeps_deliveries_to_a_disabled_endpoint_pending(
    receiver: Receiver, acme: Customer
) -> None:
    endpoint = receiver.endpoint()
    delivery = _delivery(event_publish(type="alert.triggered", data=ALERT, customer=acme))
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(enabled=False)

    assert services.delivery_attempt(delivery_id=delivery.pk) is None

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 0)
    assert receiver.bodies == []


@pytest.mark.usefixtures("eager_celery")
def test_the_sweep_sends_what_is_due(receiver: Receiver, acme: Customer) -> None:
    receiver.endpoint()
    event_publish(type="alert.triggered", data=ALERT, customer=acme)
    later = event_publish(type="balance.depleted", data={}, customer=acme)
    WebhookDelivery.objects.filter(event=later).update(
        next_attempt_at=timezone.now() + timedelta(minutes=5)
    )

    assert tasks.deliveries_send_due() == 1

    assert [body["type"] for body in receiver.events()] == ["alert.triggered"]
    assert tasks.deliveries_send_due() == 0


def test_the_body_is_compact_json() -> None:
    event = event_publish(type="balance.depleted", data={"credits": Decimal("1.5")})
    assert json.loads(services.event_body(event))["data"] == {"credits": "1.5"}
    assert b" " not in services.event_body(event)
