from __future__ import annotations

from celery import shared_task

from plans import services


@shared_task
def subscriptions_renew_due() -> int:
    return services.subscriptions_renew_due()
