"""Endpoints, events and the delivery log in the staff admin; replaying a delivery."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from billing_portal.outbound import tasks
from billing_portal.outbound.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from billing_portal.outbound.services import delivery_replay, event_publish
from billing_portal.staff.models import AuditLog
from tests.billing_portal.outbound.conftest import Receiver
from tests.plans.factories import customer

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw"))
    return client


def _role(name: str) -> Client:
    user = User.objects.create_user(name.lower(), password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=name))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def delivered(receiver: Receiver, settings: Any) -> WebhookDelivery:
    """A delivery that took three attempts: 500, 500, then 200."""
    settings.OUTBOUND_WEBHOOK_BACKOFF_SECONDS = 0
    receiver.endpoint()
    receiver.codes = [500, 500]
    event = event_publish(type="alert.triggered", data={"alert": "usage_80"}, customer=customer())
    delivery = WebhookDelivery.objects.get(event=event)
    for _ in range(3):
        tasks.delivery_send(delivery.pk)
    return delivery


def _codes(delivery: WebhookDelivery) -> list[int | None]:
    return list(delivery.attempt_log.order_by("number").values_list("status_code", flat=True))


@pytest.mark.usefixtures("eager_celery")
def test_it_replays_the_selected_deliveries(
    admin_client: Client,
    delivered: WebhookDelivery,
    receiver: Receiver,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:outbound_webhookdelivery_changelist"),
            {"action": "replay", "_selected_action": [delivery_id := delivered.pk]},
            follow=True,
        )

    assert response.status_code == 200
    assert "1 deliveries queued to be sent again." in response.content.decode()
    delivered.refresh_from_db()
    assert (delivered.status, delivered.attempts) == (DeliveryStatus.SUCCEEDED, 4)
    assert _codes(delivered) == [500, 500, 200, 200]
    assert len(receiver.bodies) == 4
    audit = AuditLog.objects.get(action="webhook_replay")
    assert (audit.operator_name, audit.target_id) == ("root", str(delivery_id))


@pytest.mark.usefixtures("eager_celery")
def test_it_replays_one_delivery_from_its_page(
    admin_client: Client,
    delivered: WebhookDelivery,
    receiver: Receiver,
    django_capture_on_commit_callbacks: Any,
) -> None:
    url = reverse("admin:outbound_webhookdelivery_replay", args=[delivered.pk])
    page = admin_client.get(reverse("admin:outbound_webhookdelivery_change", args=[delivered.pk]))
    assert url in page.content.decode()
    assert "Replay" in admin_client.get(url).content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url)

    assert response.status_code == 302
    assert _codes(delivered) == [500, 500, 200, 200]


def test_the_delivery_log_shows_every_response_code(
    admin_client: Client, delivered: WebhookDelivery
) -> None:
    page = admin_client.get(reverse("admin:outbound_webhookdelivery_change", args=[delivered.pk]))
    content = page.content.decode()
    assert page.status_code == 200
    assert content.count(">500<") >= 2 and ">200<" in content


def test_the_event_and_endpoint_pages_render(
    admin_client: Client, delivered: WebhookDelivery
) -> None:
    for name, args in [
        ("outboundevent_changelist", []),
        ("outboundevent_change", [delivered.event_id]),
        ("webhookendpoint_changelist", []),
        ("webhookendpoint_add", []),
        ("webhookdelivery_changelist", []),
    ]:
        response = admin_client.get(reverse(f"admin:outbound_{name}", args=args))
        assert response.status_code == 200, name
    endpoint = admin_client.get(
        reverse("admin:outbound_webhookendpoint_change", args=[delivered.endpoint_id])
    )
    assert delivered.endpoint.secret in endpoint.content.decode()


def test_it_creates_an_endpoint_with_a_generated_secret(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:outbound_webhookendpoint_add"),
        {
            "url": "https://hooks.example.com/billing",
            "description": "ops",
            "event_types": ["alert.triggered", "balance.depleted"],
            "enabled": "on",
        },
    )
    assert response.status_code == 302
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.event_types == ["alert.triggered", "balance.depleted"]
    assert endpoint.secret.startswith("whsec_") and len(endpoint.secret) > 40
    audit = AuditLog.objects.get(action="webhook_endpoint_create")
    assert audit.details["event_types"] == "alert.triggered,balance.depleted"
    assert endpoint.secret not in str(audit.details)


def test_support_sees_the_log_but_neither_secrets_nor_replay(
    delivered: WebhookDelivery,
) -> None:
    support = _role("Support")
    endpoint_url = reverse("admin:outbound_webhookendpoint_change", args=[delivered.endpoint_id])
    page = support.get(endpoint_url)
    assert page.status_code == 200
    assert delivered.endpoint.secret not in page.content.decode()
    assert support.get(reverse("admin:outbound_webhookdelivery_changelist")).status_code == 200
    replay = reverse("admin:outbound_webhookdelivery_replay", args=[delivered.pk])
    assert support.post(replay).status_code == 403
    with pytest.raises(PermissionDenied):
        delivery_replay(delivery=delivered, actor=User.objects.get(username="support"))


def test_a_billing_admin_may_replay(delivered: WebhookDelivery) -> None:
    billing = _role("Billing admin")
    replay = reverse("admin:outbound_webhookdelivery_replay", args=[delivered.pk])
    assert billing.post(replay).status_code == 302
    delivered.refresh_from_db()
    assert delivered.status == DeliveryStatus.PENDING
