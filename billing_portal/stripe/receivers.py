"""Invoicing's changes, turned into Stripe syncs queued for after the commit.

Invoicing sends its signals inside the transaction that issued or voided the row and
knows nothing of Stripe. Each receiver marks the row pending in that transaction and
queues its sync task for after the commit, so a rolled-back change queues nothing and
the Stripe call runs outside any transaction. In demo mode, or for an invoice with
nothing for Stripe to collect (a credit pack's, a zero total), nothing is queued.
"""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from billing_portal.invoicing.models import CreditNote, Invoice
from billing_portal.invoicing.signals import (
    credit_note_issued,
    credit_note_voided,
    invoice_voided,
    invoices_issued,
)
from billing_portal.stripe import sync


@receiver(invoices_issued, dispatch_uid="stripe_invoices_sync")
def invoices_sync_queue(sender: Any, invoices: list[Invoice], **kwargs: Any) -> None:
    sync.invoices_sync_enqueue(invoices=invoices)


@receiver(invoice_voided, dispatch_uid="stripe_invoice_sync")
def invoice_sync_queue(sender: Any, invoice: Invoice, **kwargs: Any) -> None:
    sync.invoice_sync_enqueue(invoice=invoice)


@receiver([credit_note_issued, credit_note_voided], dispatch_uid="stripe_credit_note_sync")
def credit_note_sync_queue(sender: Any, credit_note: CreditNote, **kwargs: Any) -> None:
    sync.credit_note_sync_enqueue(credit_note=credit_note)
