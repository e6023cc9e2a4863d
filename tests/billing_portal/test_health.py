from __future__ import annotations

import pytest
from django.db import OperationalError
from django.test import Client

from billing_portal.celery import app as celery_app

pytestmark = pytest.mark.django_db


def test_it_answers_200_when_database_and_broker_are_up(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


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
    }


def test_it_refuses_other_methods(client: Client) -> None:
    assert client.post("/healthz").status_code == 405
