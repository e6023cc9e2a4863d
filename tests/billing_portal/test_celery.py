"""Tasks are enqueued only once the transaction that asked for them commits."""

from __future__ import annotations

from unittest import mock

import pytest
from django.db import transaction

from billing_portal.celery import app as celery_app


@celery_app.task(name="tests.noop")
def noop(value: int) -> int:
    return value


@pytest.mark.django_db(transaction=True)
def test_it_sends_the_task_after_commit_and_not_after_rollback() -> None:
    with mock.patch.object(noop, "apply_async") as send:
        with transaction.atomic():
            noop.delay_on_commit(1)
            assert send.call_count == 0
        assert send.call_count == 1

        with pytest.raises(RuntimeError), transaction.atomic():
            noop.delay_on_commit(2)
            raise RuntimeError("rolled back")
        assert send.call_count == 1


def test_it_has_a_beat_schedule_and_the_configured_broker() -> None:
    from django.conf import settings

    assert celery_app.conf.broker_url == settings.CELERY_BROKER_URL
    assert isinstance(celery_app.conf.beat_schedule, dict)


def test_every_scheduled_job_names_a_registered_task() -> None:
    celery_app.loader.import_default_modules()  # what a worker imports at start-up
    schedule = celery_app.conf.beat_schedule
    assert schedule, "beat has nothing to run"
    unknown = {job: entry["task"] for job, entry in schedule.items()}
    unknown = {job: task for job, task in unknown.items() if task not in celery_app.tasks}
    assert not unknown, f"beat entries naming no registered task: {unknown}"
