"""Thin tasks: reload by id, call one service; a re-run does nothing harmful."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from billing_portal.alerts import recharge, services
from billing_portal.alerts.models import Alert, RechargeAttempt
from billing_portal.stripe.adapter import StripeTemporaryError
from ledger.task_base import AfterCommitTask


@shared_task(autoretry_for=(OSError,), max_retries=8, retry_backoff=60, retry_jitter=True)
def alert_email_task(alert_id: int) -> bool:
    alert = Alert.objects.select_related("customer").get(pk=alert_id)
    return services.alert_email_send(alert=alert)


@shared_task
def alert_emails_unsent() -> int:
    return services.alert_emails_unsent()


class _RechargeTask(AfterCommitTask):
    autoretry_for = (StripeTemporaryError,)
    max_retries = 8
    retry_backoff = 30
    retry_backoff_max = 3600
    retry_jitter = True
    acks_late = True

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Failed for good (not a retry): the attempt must not block recharges forever.
        attempt_id = args[0] if args else next(iter(kwargs.values()))
        attempt = RechargeAttempt.objects.get(pk=int(attempt_id))
        recharge.recharge_attempt_resolve(
            attempt=attempt, purchase=None, message=str(exc) or type(exc).__name__
        )


@shared_task(base=_RechargeTask)
def recharge_attempt_run_task(attempt_id: int) -> str:
    attempt = RechargeAttempt.objects.get(pk=attempt_id)
    return recharge.recharge_attempt_run(attempt=attempt).status


@shared_task
def recharge_attempts_reconcile_task() -> int:
    return recharge.recharge_attempts_reconcile()
