"""The Celery app: worker and beat share this module.

Jobs are scheduled here; each names a thin task that reloads rows by id and calls one
service, so running a job twice does no harm.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from billing_portal.runtime import startup_objects_freeze

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")

# Every task is sent after commit without ever failing the commit (see the base class).
app = Celery("billing_portal", task_cls="ledger.task_base:AfterCommitTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _startup_objects_freeze(**kwargs: Any) -> None:
    # In each pool process, once it has the tasks loaded (billing_portal.runtime).
    startup_objects_freeze()


app.conf.beat_schedule = {
    "expire-credit-grants": {"task": "ledger.tasks.credit_grants_expire_due", "schedule": 60.0},
    "expire-holds": {"task": "ledger.tasks.holds_expire", "schedule": 15.0},
    # Ingest enqueues rating on every batch; this sweep catches anything a lost message left.
    "rate-pending-events": {"task": "metering.tasks.events_rate_pending", "schedule": 2.0},
    # Retention of raw events, when METERING_RAW_RETENTION_MONTHS is set: whole months,
    # so four runs a day are plenty (each reads the events older than the cutoff).
    "remove-raw-events": {"task": "metering.tasks.raw_events_remove", "schedule": 21600.0},
    # Events and ratings are partitioned by month; the next months' partitions are made
    # ahead (two months ahead, so a day's delay of this job changes nothing).
    "make-event-partitions": {"task": "metering.tasks.partitions_ensure", "schedule": 86400.0},
    "renew-subscriptions": {"task": "plans.tasks.subscriptions_renew_due", "schedule": 60.0},
    "recognize-revenue": {
        "task": "billing_portal.invoicing.tasks.revenue_recognize",
        "schedule": 60.0,
    },
    # Period close, the whole flow: billing_portal/invoicing/period_close.py.
    "close-periods": {
        "task": "billing_portal.invoicing.tasks.periods_close_due_task",
        "schedule": 60.0,
    },
    # Auto-recharges a webhook resolved, or whose task message was lost.
    "reconcile-auto-recharges": {
        "task": "billing_portal.alerts.tasks.recharge_attempts_reconcile_task",
        "schedule": 60.0,
    },
    # Stripe syncs and alert e-mails whose task message was never sent (broker down).
    "resend-unsent-stripe-syncs": {
        # billing_portal/stripe/tasks.py, under the name it had before it moved there.
        "task": "billing_portal.invoicing.tasks.stripe_syncs_unsent",
        "schedule": 300.0,
    },
    "send-unsent-alert-emails": {
        "task": "billing_portal.alerts.tasks.alert_emails_unsent",
        "schedule": 300.0,
    },
    "prune-idempotency-keys": {
        "task": "billing_portal.api.tasks.idempotency_records_prune_task",
        "schedule": 3600.0,
    },
    # Webhook retries and sends whose message was lost.
    "send-due-webhooks": {
        "task": "billing_portal.outbound.tasks.deliveries_send_due",
        "schedule": 15.0,
    },
}
