"""Events committed while the broker is unreachable are answered 202, not 500: the send of
the rating task is logged and left to the beat sweep, which then rates them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from kombu.exceptions import OperationalError as BrokerUnreachable

from ledger import task_base
from metering import tasks
from metering.models import EventRating, MeterEvent, RatingQueue
from plans.services import subscription_start
from tests.billing_portal.api.http_support import assert_reconciled
from tests.plans.factories import customer, plan

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    attempts: list[str] = []

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        attempts.append(self.name)
        raise BrokerUnreachable("[Errno 111] Connection refused")

    task_base.broker_rest_reset()
    monkeypatch.setattr(tasks.events_rate_pending.__class__, "apply_async", refuse)
    yield attempts
    task_base.broker_rest_reset()


def _events(*identifiers: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "events": [
            {
                "identifier": identifier,
                "event_name": "llm.tokens",
                "customer": "acme",
                "timestamp": now,
                "value": "1000",
                "dimensions": {"model": "large", "token_type": "output"},
            }
            for identifier in identifiers
        ]
    }


def test_events_stored_while_the_broker_is_down_are_202_and_rated_by_the_sweep(
    api_server: tuple[str, str], broker_down: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    url, key = api_server
    subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    headers = {"Authorization": f"Bearer {key}"}

    first = requests.post(
        f"{url}/api/v1/events", json=_events("a", "b"), headers=headers, timeout=30
    )
    second = requests.post(f"{url}/api/v1/events", json=_events("c"), headers=headers, timeout=30)

    assert (first.status_code, first.json()["accepted"]) == (202, 2)
    assert (second.status_code, second.json()["accepted"]) == (202, 1)
    assert broker_down == ["metering.tasks.events_rate_pending"]  # then it rests a moment
    assert "not sent, the broker is unreachable" in caplog.text
    assert RatingQueue.objects.count() == MeterEvent.objects.count() == 3

    # The beat sweep (here run in place) rates what the lost messages would have.
    tasks.events_rate_pending.run()
    assert EventRating.objects.count() == 3
    assert_reconciled()


def test_a_failed_send_rests_then_tries_again(
    broker_down: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(task_base.time, "monotonic", lambda: clock[0])
    assert task_base.send_quietly(tasks.events_rate_pending) is False
    assert task_base.send_quietly(tasks.events_rate_pending) is False
    assert len(broker_down) == 1
    clock[0] += task_base.BROKER_REST_SECONDS + 0.1
    assert task_base.send_quietly(tasks.events_rate_pending) is False
    assert len(broker_down) == 2
