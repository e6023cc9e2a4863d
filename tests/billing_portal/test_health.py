from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client
from django.utils import timezone

from billing_portal.celery import app as celery_app
from metering.models import MeterEvent, RatingQueue
from plans.models import Customer, Meter
from tests.plans.factories import customer, load_demo_catalog

pytestmark = pytest.mark.django_db


def test_it_answers_200_when_database_and_broker_are_up(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "broker": "ok", "rating": "ok"}
    assert body["rating"] == {
        "lag_seconds": 0.0,
        "oldest_unrated_at": None,
        "failing": 0,
        "parked": 0,
    }
    assert body["partitions"]["months_ahead"] == 2
    assert body["partitions"]["rows_in_default"] == 0


def test_it_answers_503_naming_the_broker_when_it_is_unreachable(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on port 1: the connection is refused at once.
    monkeypatch.setattr(celery_app.conf, "broker_url", "amqp://guest:guest@127.0.0.1:1//")
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] != "ok"


def test_it_answers_503_naming_the_database_when_it_fails(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from billing_portal import health

    class BrokenConnection:
        def cursor(self) -> None:
            raise OperationalError("connection refused")

    monkeypatch.setattr(health, "connection", BrokenConnection())
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"] == {
        "database": "OperationalError: connection refused",
        "broker": "ok",
        "rating": "unknown: the database is unreachable",
    }


def test_it_refuses_other_methods(client: Client) -> None:
    assert client.post("/healthz").status_code == 405


def _queued_event(identifier: str, enqueued_ago: timedelta, **failure: Any) -> MeterEvent:
    acme = Customer.objects.get(external_id="acme")
    event = MeterEvent.objects.create(
        customer=acme,
        identifier=identifier,
        event_name="llm.tokens",
        meter=Meter.objects.get(code="llm_tokens"),
        timestamp=timezone.now(),
        value=Decimal(1000),
        dimensions={"model": "small", "token_type": "input"},
        content_hash=identifier,
        received_at=timezone.now(),
    )
    row = RatingQueue.objects.create(event=event, customer_id=acme.pk, **failure)
    RatingQueue.objects.filter(pk=row.pk).update(enqueued_at=timezone.now() - enqueued_ago)
    return event


@pytest.fixture
def acme() -> Customer:
    load_demo_catalog()
    return customer()


def test_it_answers_503_naming_rating_when_the_oldest_unrated_event_is_too_old(
    client: Client, acme: Customer, settings: Any
) -> None:
    settings.HEALTH_MAX_RATING_LAG_SECONDS = 120
    stuck = _queued_event("stuck", timedelta(seconds=300))
    _queued_event("recent", timedelta(seconds=30))
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["rating"].startswith("behind: the oldest unrated event has waited 30")
    assert body["rating"]["lag_seconds"] >= 300

    RatingQueue.objects.filter(event=stuck).delete()  # rated, say
    ok = client.get("/healthz")
    assert ok.status_code == 200
    assert 29 <= ok.json()["rating"]["lag_seconds"] < 120


def test_failing_and_parked_events_are_counted_but_do_not_fail_the_probe(
    client: Client, acme: Customer
) -> None:
    _queued_event("failing", timedelta(hours=1), attempts=2, last_error="DataError")
    _queued_event(
        "parked", timedelta(hours=2), attempts=5, last_error="DataError", parked_at=timezone.now()
    )
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["rating"] == {
        "lag_seconds": 0.0,
        "oldest_unrated_at": None,
        "failing": 1,
        "parked": 1,
    }
