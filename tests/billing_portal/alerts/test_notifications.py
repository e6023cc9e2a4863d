"""Portal notifications: the dashboard banner, the list page, marking read, limit notices."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.urls import reverse

from billing_portal.alerts.models import Alert, AlertKind
from billing_portal.alerts.services import alert_raise
from billing_portal.portal.models import Role
from billing_portal.portal.services import spend_limit_set
from plans.models import Customer, SubscriptionPeriod
from tests.billing_portal.alerts.factories import alert_settings, use
from tests.billing_portal.portal.factories import member, subscribed_customer
from tests.plans.factories import load_demo_catalog

pytestmark = pytest.mark.django_db
HTMX: dict[str, Any] = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def acme(clock: time_machine.Traveller) -> Customer:
    load_demo_catalog()
    return subscribed_customer("acme")  # pro: 20,000 included credits


@pytest.fixture
def owner(acme: Customer) -> User:
    return member(acme)


@pytest.fixture
def client_owner(owner: User) -> Client:
    client = Client()
    client.force_login(owner)
    return client


def _crossed_half(acme: Customer, django_capture_on_commit_callbacks: Any) -> Alert:
    with django_capture_on_commit_callbacks(execute=True):
        use(acme, 7)  # 10,500 of 20,000
    return Alert.objects.get(threshold="50")


def test_it_emails_the_owners_and_admins_once_per_alert(
    acme: Customer, owner: User, django_capture_on_commit_callbacks: Any
) -> None:
    member(acme, Role.ADMIN)
    member(acme, Role.VIEWER)
    _crossed_half(acme, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        use(acme, 1)
    (email,) = mail.outbox
    assert sorted(email.to) == ["admin@acme.test", "owner@acme.test"]
    assert email.subject == "[Acme] Usage alert"
    assert "50% of this period's included credits are used (10,500 of 20,000)" in email.body


def test_a_rerun_of_the_email_task_sends_nothing(
    acme: Customer, owner: User, django_capture_on_commit_callbacks: Any
) -> None:
    from billing_portal.alerts.tasks import alert_email_task

    alert = _crossed_half(acme, django_capture_on_commit_callbacks)
    assert alert_email_task(alert.pk) is False
    assert len(mail.outbox) == 1


def test_the_dashboard_shows_the_latest_unread_alert(
    acme: Customer, client_owner: Client, django_capture_on_commit_callbacks: Any
) -> None:
    _crossed_half(acme, django_capture_on_commit_callbacks)
    html = client_owner.get(reverse("portal:dashboard")).content.decode()
    assert 'id="alert-banner"' in html
    assert "Usage alert:</strong> 50% of this period&#x27;s included credits are used" in html
    assert reverse("portal:notifications") in html


def test_the_list_page_lists_every_alert(
    acme: Customer, client_owner: Client, django_capture_on_commit_callbacks: Any
) -> None:
    _crossed_half(acme, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        use(acme, 4)  # 16,500: 82.5%
    html = client_owner.get(reverse("portal:notifications")).content.decode()
    assert html.count('class="unread"') == 2
    assert "50% of this period" in html and "80% of this period" in html


def test_marking_read_with_htmx_swaps_the_banner_for_the_next_one(
    acme: Customer, client_owner: Client, django_capture_on_commit_callbacks: Any
) -> None:
    half = _crossed_half(acme, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        use(acme, 4)
    eighty = Alert.objects.get(threshold="80")

    response = client_owner.post(reverse("portal:notification_read", args=[eighty.pk]), **HTMX)

    assert response.status_code == 200
    assert "50% of this period" in response.content.decode()
    eighty.refresh_from_db()
    assert eighty.read_at is not None
    client_owner.post(reverse("portal:notification_read", args=[half.pk]), **HTMX)
    html = client_owner.get(reverse("portal:dashboard")).content.decode()
    assert "Mark as read" not in html
    assert html.count('class="unread"') == 0


def test_marking_read_without_javascript_goes_back(
    acme: Customer, client_owner: Client, django_capture_on_commit_callbacks: Any
) -> None:
    alert = _crossed_half(acme, django_capture_on_commit_callbacks)
    url = reverse("portal:notification_read", args=[alert.pk])
    response = client_owner.post(url, {"next": reverse("portal:dashboard")})
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:dashboard")
    response = client_owner.post(url, {"next": "https://evil.example/"})
    assert response["Location"] == reverse("portal:notifications")


def test_another_customers_alert_is_not_found(acme: Customer, client_owner: Client) -> None:
    other = subscribed_customer("globex")
    alert = alert_raise(
        customer=other,
        kind=AlertKind.USAGE_THRESHOLD,
        threshold="50",
        period=SubscriptionPeriod.objects.get(subscription__customer=other),
        message="50% used",
        data={},
    )
    assert alert is not None
    url = reverse("portal:notification_read", args=[alert.pk])
    assert client_owner.post(url).status_code == 404
    assert client_owner.post(url, **HTMX).status_code == 404
    alert.refresh_from_db()
    assert alert.read_at is None
    assert "50% used" not in client_owner.get(reverse("portal:notifications")).content.decode()


def test_a_viewer_sees_and_reads_notifications(
    acme: Customer, django_capture_on_commit_callbacks: Any
) -> None:
    alert = _crossed_half(acme, django_capture_on_commit_callbacks)
    client = Client()
    client.force_login(member(acme, Role.VIEWER))
    assert client.get(reverse("portal:notifications")).status_code == 200
    assert client.post(reverse("portal:notification_read", args=[alert.pk])).status_code == 302


def test_the_pages_say_when_the_spend_limit_refuses_requests(
    acme: Customer, client_owner: Client
) -> None:
    alert_settings(acme, usage_thresholds=[])
    spend_limit_set(customer=acme, limit=Decimal(1500))
    use(acme, 1)
    controls = client_owner.get(reverse("portal:controls")).content.decode()
    assert 'id="spend-limit-notice"' in controls
    dashboard = client_owner.get(reverse("portal:dashboard")).content.decode()
    assert dashboard.count("Your monthly spend limit is reached") == 1


def test_the_pages_say_when_a_hard_stop_refuses_requests(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    starter = subscribed_customer("starter-co", plan_code="starter")  # 2,000, hard stop
    client = Client()
    client.force_login(member(starter))
    assert 'id="hard-stop-notice"' not in client.get(reverse("portal:dashboard")).content.decode()
    use(starter, 2)  # 3,000 > 2,000
    assert 'id="hard-stop-notice"' in client.get(reverse("portal:dashboard")).content.decode()
    assert 'id="hard-stop-notice"' in client.get(reverse("portal:controls")).content.decode()
