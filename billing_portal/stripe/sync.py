"""Making Stripe match our invoices and credit notes, and recording what Stripe did.

Our rows are the record; Stripe collects. The ``*_sync`` services call Stripe, so they
must run outside any database transaction (tasks call them): their first write is a
durable atomic block, which Django refuses inside a caller's transaction, so the mistake
fails loudly before any network call. Each Stripe id is stored in its own short
transaction as soon as Stripe returns it, so a retry reuses it instead of creating a
second object, even after Stripe has forgotten the idempotency key.

The ``*_sync_enqueue`` services mark a row pending and queue its task after commit; the
receivers call them when invoicing issues or voids an invoice or a credit note. The
``invoice_stripe_*`` services record what Stripe tells us by webhook; they make no
network call and run in the webhook's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.db import transaction
from django.db.models import F, Model
from django.utils import timezone

from billing_portal.invoicing import collection
from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteMethod,
    CreditNoteStatus,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStatus,
    SyncState,
)
from billing_portal.stripe import adapter
from billing_portal.stripe.adapter import StripeAdapterError, StripeGateway, StripeTemporaryError
from plans.models import Customer
from plans.money import as_money

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Model)


def _write(model: type[Model], pk: int, **fields: Any) -> None:
    # durable=True: refuses to run inside someone else's transaction, which would hold
    # row locks across our Stripe calls (and lose these ids if it rolled back).
    with transaction.atomic(durable=True):
        model._default_manager.filter(pk=pk).update(**fields)


def outside_transaction_required() -> None:
    """Raise before a Stripe call if we are inside a transaction (tests' own are allowed)."""
    with transaction.atomic(durable=True):
        pass


# --- customers --------------------------------------------------------------------------


def stripe_customer_ensure(*, gateway: StripeGateway, customer: Customer) -> str:
    """The customer's Stripe id, creating the Stripe customer once and storing its id."""
    if customer.stripe_customer_id:
        return customer.stripe_customer_id
    stripe_id = gateway.customer_ensure(customer=customer)
    # The key is derived from our pk, so a racing caller got the same Stripe customer.
    _write(Customer, customer.pk, stripe_customer_id=stripe_id)
    customer.stripe_customer_id = stripe_id
    return stripe_id


# --- invoices ---------------------------------------------------------------------------


def invoice_needs_stripe(invoice: Invoice) -> bool:
    """Period invoices with something to collect. Pack invoices are paid through checkout
    or a payment intent, so sending them as Stripe invoices would charge twice."""
    if invoice.kind != InvoiceKind.PERIOD or as_money(invoice.total).amount == 0:
        return False
    return bool(invoice.stripe_invoice_id) or invoice.status == InvoiceStatus.OPEN


def invoice_sync(*, invoice: Invoice) -> Invoice:
    """Push an invoice to Stripe (or its void); a re-run after success does nothing.

    On a Stripe failure the invoice is marked ``failed`` with a message for staff and the
    error is raised again, so the task can retry it.
    """
    invoice = Invoice.objects.select_related("customer").get(pk=invoice.pk)
    gateway = adapter.gateway_from_settings()
    if gateway is None or not invoice_needs_stripe(invoice):
        if invoice.sync_state != SyncState.SYNCED:
            _write(Invoice, invoice.pk, sync_state=SyncState.NOT_SYNCED, sync_error="")
        return _reloaded(invoice)
    if invoice.sync_state == SyncState.SYNCED:
        return invoice
    _write(Invoice, invoice.pk, sync_state=SyncState.PENDING, sync_attempts=F("sync_attempts") + 1)
    try:
        fields = _invoice_push_or_void(gateway, invoice)
    except StripeAdapterError as exc:
        _write(Invoice, invoice.pk, sync_state=SyncState.FAILED, sync_error=str(exc))
        raise
    _write(Invoice, invoice.pk, sync_state=SyncState.SYNCED, sync_error="", **fields)
    return _reloaded(invoice)


def _invoice_push_or_void(gateway: StripeGateway, invoice: Invoice) -> dict[str, str]:
    if invoice.status == InvoiceStatus.VOID:
        gateway.invoice_void(invoice=invoice)
        return {}
    stripe_customer_ensure(gateway=gateway, customer=invoice.customer)

    def invoice_created(stripe_id: str) -> None:
        _write(Invoice, invoice.pk, stripe_invoice_id=stripe_id)

    def item_created(line: InvoiceLine, stripe_id: str) -> None:
        _write(InvoiceLine, line.pk, stripe_invoice_item_id=stripe_id)

    result = gateway.invoice_push(
        invoice=invoice, on_invoice_created=invoice_created, on_item_created=item_created
    )
    return {
        "stripe_invoice_id": result.stripe_invoice_id,
        "hosted_invoice_url": result.hosted_invoice_url,
    }


def invoice_sync_gave_up(*, invoice_id: int, error: str) -> None:
    """The task stopped retrying: leave the invoice ``failed`` for staff to look at."""
    Invoice.objects.filter(pk=invoice_id).exclude(sync_state=SyncState.SYNCED).update(
        sync_state=SyncState.FAILED, sync_error=error
    )


def invoice_sync_enqueue(*, invoice: Invoice) -> None:
    """Queue the Stripe sync of an invoice once the current transaction commits."""
    invoices_sync_enqueue(invoices=[invoice])


def invoices_sync_enqueue(*, invoices: Sequence[Invoice]) -> None:
    """Queue the Stripe syncs of invoices once the current transaction commits, marking
    them pending in one statement.

    Runs in the transaction that created (or voided) the invoices, called by the
    receivers of invoicing's signals; nothing is queued in demo mode, nor for an invoice
    with nothing to collect.
    """
    from billing_portal.stripe.tasks import invoice_sync_task

    if not adapter.stripe_enabled():
        return
    pending = [invoice for invoice in invoices if invoice_needs_stripe(invoice)]
    if not pending:
        return
    Invoice.objects.filter(pk__in=[invoice.pk for invoice in pending]).update(
        sync_state=SyncState.PENDING, sync_error=""
    )
    for invoice in pending:
        invoice.sync_state = SyncState.PENDING
        invoice.sync_error = ""
        invoice_sync_task.delay_on_commit(invoice.pk)


# A sync queued this long ago and never started lost its message (the broker was down
# when it was sent): the sweep sends it again. The task's own retries run long after
# their first attempt, so only never-attempted invoices qualify.
UNSENT_AFTER = timedelta(minutes=10)


def stripe_syncs_unsent(*, now: datetime | None = None) -> int:
    """Queue again the Stripe syncs whose task never ran; return how many."""
    from billing_portal.stripe.tasks import credit_note_sync_task, invoice_sync_task

    before = (now or timezone.now()) - UNSENT_AFTER
    invoices = Invoice.objects.filter(
        sync_state=SyncState.PENDING, sync_attempts=0, created_at__lt=before
    ).values_list("pk", flat=True)[:500]
    notes = CreditNote.objects.filter(
        sync_state=SyncState.PENDING, created_at__lt=before
    ).values_list("pk", flat=True)[:500]
    for pk in invoices:
        invoice_sync_task.delay(pk)
    for pk in notes:
        credit_note_sync_task.delay(pk)
    return len(invoices) + len(notes)


def sync_retry(*, invoice: Invoice, actor: str) -> Invoice:
    """Staff: try a failed (or stuck) Stripe sync again, in the background."""
    invoice = Invoice.objects.get(pk=invoice.pk)
    if invoice.sync_state == SyncState.SYNCED:
        return invoice
    logger.info("invoice %s: Stripe sync retried by %s", invoice.number, actor)
    invoice_sync_enqueue(invoice=invoice)
    return invoice


# --- credit notes -----------------------------------------------------------------------


def credit_note_sync(*, credit_note: CreditNote) -> CreditNote:
    """Issue (or void) a credit note in Stripe; a re-run after success does nothing.

    A credit note on a period invoice becomes a Stripe credit note on its Stripe invoice,
    waiting (and retrying) while that invoice is still on its way. A refund of a credit
    pack, which had no Stripe invoice, becomes a refund of its payment.
    """
    credit_note = CreditNote.objects.select_related("invoice").get(pk=credit_note.pk)
    gateway = adapter.gateway_from_settings()
    if credit_note.sync_state == SyncState.SYNCED:
        return credit_note
    if gateway is None or not _credit_note_needs_stripe(credit_note):
        _write(CreditNote, credit_note.pk, sync_state=SyncState.NOT_SYNCED, sync_error="")
        return _reloaded(credit_note)
    _write(CreditNote, credit_note.pk, sync_state=SyncState.PENDING)
    try:
        fields = _credit_note_push(gateway, credit_note)
    except StripeTemporaryError as exc:
        _write(CreditNote, credit_note.pk, sync_state=SyncState.PENDING, sync_error=str(exc))
        raise
    except StripeAdapterError as exc:
        _write(CreditNote, credit_note.pk, sync_state=SyncState.FAILED, sync_error=str(exc))
        raise
    _write(CreditNote, credit_note.pk, sync_state=SyncState.SYNCED, sync_error="", **fields)
    return _reloaded(credit_note)


def _credit_note_needs_stripe(credit_note: CreditNote) -> bool:
    if credit_note.status == CreditNoteStatus.VOID:
        return bool(credit_note.stripe_credit_note_id)
    invoice = credit_note.invoice
    if invoice.kind == InvoiceKind.CREDIT_PACK:
        return credit_note.method == CreditNoteMethod.REFUND and bool(_pack_payment(invoice))
    return invoice_needs_stripe(invoice) or invoice.sync_state in (
        SyncState.PENDING,
        SyncState.FAILED,
    )


def _pack_payment(invoice: Invoice) -> str:
    purchase = getattr(invoice, "purchase", None)
    intent = purchase.stripe_payment_intent_id if purchase is not None else ""
    return intent if intent.startswith("pi_") else ""  # demo payments never reached Stripe


def _credit_note_push(gateway: StripeGateway, credit_note: CreditNote) -> dict[str, str]:
    existing = credit_note.stripe_credit_note_id
    if credit_note.status == CreditNoteStatus.VOID:
        if existing.startswith("re_"):
            raise StripeAdapterError(
                f"credit note {credit_note.number} was paid out as Stripe refund {existing}; "
                "a refund cannot be taken back, so Stripe was left unchanged"
            )
        gateway.credit_note_void(credit_note=credit_note)
        return {}
    if existing:
        return {}  # issued by an earlier attempt whose result we did not get to record
    invoice = credit_note.invoice
    if invoice.kind == InvoiceKind.CREDIT_PACK:
        refund_id = gateway.refund_create(
            credit_note=credit_note, payment_intent_id=_pack_payment(invoice)
        )
        return {"stripe_credit_note_id": refund_id}  # "re_...": there is no Stripe invoice
    if invoice.sync_state != SyncState.SYNCED:
        raise StripeTemporaryError(
            f"credit note {credit_note.number} waits for invoice {invoice.number} to reach "
            f"Stripe (its sync is {invoice.sync_state})"
        )
    return {"stripe_credit_note_id": gateway.credit_note_create(credit_note=credit_note)}


def credit_note_sync_gave_up(*, credit_note_id: int, error: str) -> None:
    CreditNote.objects.filter(pk=credit_note_id).exclude(sync_state=SyncState.SYNCED).update(
        sync_state=SyncState.FAILED, sync_error=error
    )


def credit_note_sync_enqueue(*, credit_note: CreditNote) -> None:
    """Queue the Stripe sync of a credit note (issued or voided) once the transaction commits."""
    from billing_portal.stripe.tasks import credit_note_sync_task

    if not adapter.stripe_enabled():
        return
    CreditNote.objects.filter(pk=credit_note.pk).update(sync_state=SyncState.PENDING, sync_error="")
    credit_note.sync_state = SyncState.PENDING
    credit_note.sync_error = ""
    credit_note_sync_task.delay_on_commit(credit_note.pk)


def credit_note_sync_retry(*, credit_note: CreditNote, actor: str) -> CreditNote:
    """Staff: try a failed Stripe sync of a credit note again, in the background."""
    credit_note = CreditNote.objects.get(pk=credit_note.pk)
    if credit_note.sync_state == SyncState.SYNCED:
        return credit_note
    logger.info("credit note %s: Stripe sync retried by %s", credit_note.number, actor)
    credit_note_sync_enqueue(credit_note=credit_note)
    return credit_note


def _reloaded(row: M) -> M:
    row.refresh_from_db()
    return row


# --- what Stripe tells us (webhooks) ----------------------------------------------------


def invoice_stripe_paid(*, invoice: Invoice, paid_at: datetime | None = None) -> Invoice:
    """Stripe collected the invoice. Late or repeated news changes nothing; the customer's
    past-due state follows (invoicing.collection)."""
    return collection.invoice_paid_record(invoice=invoice, paid_at=paid_at)


def invoice_stripe_voided(*, invoice: Invoice, voided_at: datetime | None = None) -> Invoice:
    """Voided in Stripe (e.g. from its dashboard). A paid invoice stays paid."""
    return collection.invoice_voided_record(invoice=invoice, voided_at=voided_at)


def invoice_stripe_uncollectible(*, invoice: Invoice) -> Invoice:
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.status != InvoiceStatus.OPEN:
            return locked
        locked.status = InvoiceStatus.UNCOLLECTIBLE
        locked.save(update_fields=["status"])
    return locked
