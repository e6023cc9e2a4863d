from __future__ import annotations

from celery import shared_task

from ledger import services


@shared_task
def credit_grants_expire_due() -> int:
    return services.credit_grants_expire_due()


@shared_task
def holds_expire() -> int:
    return services.holds_expire()
