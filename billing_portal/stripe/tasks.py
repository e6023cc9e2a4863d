"""Tasks that talk to Stripe: each reloads its row by id and calls one sync service.

A temporary Stripe failure is retried with exponential back-off (30 s doubling to an
hour, about two hours in all, well inside the 24 hours Stripe keeps idempotency keys).
A refusal that retrying cannot fix, or the last failed retry, leaves the row ``failed``
with the error for staff, who can retry it from the admin.

Each task keeps the name it had before it moved here, so messages already queued under
that name still find it.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from billing_portal.invoicing.models import CreditNote, Invoice
from billing_portal.stripe import sync
from billing_portal.stripe.adapter import StripeTemporaryError
from ledger.task_base import AfterCommitTask


class _StripeSyncTask(AfterCommitTask):
    autoretry_for = (StripeTemporaryError,)
    max_retries = 8
    retry_backoff = 30
    retry_backoff_max = 3600
    retry_jitter = True
    acks_late = True

    def gave_up(self, row_id: int, error: str) -> None:
        raise NotImplementedError

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Called once the task has failed for good (not on the retries before it).
        row_id = args[0] if args else next(iter(kwargs.values()))
        self.gave_up(int(row_id), str(exc) or type(exc).__name__)


class _InvoiceSyncTask(_StripeSyncTask):
    def gave_up(self, row_id: int, error: str) -> None:
        sync.invoice_sync_gave_up(invoice_id=row_id, error=error)


class _CreditNoteSyncTask(_StripeSyncTask):
    def gave_up(self, row_id: int, error: str) -> None:
        sync.credit_note_sync_gave_up(credit_note_id=row_id, error=error)


@shared_task(base=_InvoiceSyncTask, name="billing_portal.invoicing.stripe_tasks.invoice_sync_task")
def invoice_sync_task(invoice_id: int) -> str:
    invoice = Invoice.objects.get(pk=invoice_id)
    return sync.invoice_sync(invoice=invoice).sync_state


@shared_task(
    base=_CreditNoteSyncTask,
    name="billing_portal.invoicing.stripe_tasks.credit_note_sync_task",
)
def credit_note_sync_task(credit_note_id: int) -> str:
    credit_note = CreditNote.objects.get(pk=credit_note_id)
    return sync.credit_note_sync(credit_note=credit_note).sync_state


@shared_task(name="billing_portal.invoicing.tasks.stripe_syncs_unsent")
def stripe_syncs_unsent_task() -> int:
    """Beat (``resend-unsent-stripe-syncs``): queue again the syncs whose message was lost."""
    return sync.stripe_syncs_unsent()
