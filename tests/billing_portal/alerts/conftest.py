from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import time_machine

from billing_portal.celery import app as celery_app
from tests.billing_portal.alerts.factories import NOW


@pytest.fixture(autouse=True)
def _environment(settings: Any) -> Iterator[None]:
    """Demo mode (no Stripe key) and tasks run in-process when their commit happens."""
    settings.STRIPE_API_KEY = ""
    eager = {"task_always_eager": True, "task_eager_propagates": True}
    saved = {name: celery_app.conf.get(name) for name in eager}
    celery_app.conf.update(eager)
    yield
    celery_app.conf.update(saved)


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller
