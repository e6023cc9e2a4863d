"""Credit notes: the formal way to reduce an invoice after it is issued.

A credit note never exceeds what is still creditable on the invoice (its total less the
credit notes already issued and not voided), line by line. Refunding a credit pack also
voids the pack's unused credits, so the customer cannot keep what was paid back.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteLine,
    CreditNoteMethod,
    CreditNoteReason,
    CreditNoteStatus,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
)
from billing_portal.invoicing.services import cents, invoice_number_next
from billing_portal.invoicing.signals import credit_note_issued, credit_note_voided
from ledger import services as ledger
from ledger.errors import DomainError
from ledger.models import ZERO, GrantStatus
from plans.money import as_money


class CreditNoteError(DomainError):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)


@dataclass(frozen=True)
class LineCredit:
    line: InvoiceLine
    amount: Decimal


def line_creditable(line: InvoiceLine) -> Decimal:
    """What is left to credit on a line: its amount less live credit notes on it."""
    credited = CreditNoteLine.objects.filter(
        invoice_line=line, credit_note__status=CreditNoteStatus.ISSUED
    ).aggregate(total=Sum("amount"))["total"]
    return as_money(line.amount).amount - (credited or ZERO)


def invoice_creditable(invoice: Invoice) -> Decimal:
    return sum((line_creditable(line) for line in invoice.lines.all()), ZERO)


def credit_note_preview(
    *, invoice: Invoice, lines: dict[int, Decimal] | None, amount: Decimal | None
) -> list[LineCredit]:
    """The per-line credits a request would make, checked; nothing is written.

    ``lines`` maps invoice line ids to amounts (None: the whole creditable amount);
    ``amount`` instead spreads one amount over the lines in order.
    """
    if invoice.status in (InvoiceStatus.DRAFT, InvoiceStatus.VOID):
        raise CreditNoteError(
            "invoice_not_creditable",
            f"invoice {invoice.number} is {invoice.status}; only issued invoices take credit notes",
        )
    invoice_lines = {line.pk: line for line in invoice.lines.order_by("pk")}
    if (lines is None) == (amount is None):
        raise CreditNoteError(
            "invalid_request", "choose lines or an amount, not both and not neither", "lines"
        )
    if lines is not None:
        return [_line_credit(invoice_lines, line_id, value) for line_id, value in lines.items()]
    assert amount is not None
    return _spread(invoice, list(invoice_lines.values()), amount)


def _line_credit(
    invoice_lines: dict[int, InvoiceLine], line_id: int, value: Decimal | None
) -> LineCredit:
    line = invoice_lines.get(line_id)
    if line is None:
        raise CreditNoteError("invalid_request", f"line {line_id} is not on this invoice", "lines")
    left = line_creditable(line)
    credit = left if value is None else cents(value)
    if credit <= 0:
        raise CreditNoteError(
            "invalid_request",
            f"line {line_id}: the amount must be positive; {left} is left to credit",
            "lines",
        )
    if credit > left:
        raise CreditNoteError(
            "amount_exceeds_creditable",
            f"line {line_id}: {credit} is more than the {left} left to credit",
            "lines",
        )
    return LineCredit(line, credit)


def _spread(invoice: Invoice, lines: list[InvoiceLine], amount: Decimal) -> list[LineCredit]:
    amount = cents(amount)
    total = invoice_creditable(invoice)
    if amount <= 0 or amount > total:
        raise CreditNoteError(
            "amount_exceeds_creditable",
            f"amount must be positive and at most the {total} left to credit "
            f"on invoice {invoice.number}",
            "amount",
        )
    credits, left = [], amount
    for line in lines:
        take = min(line_creditable(line), left)
        if take > 0:
            credits.append(LineCredit(line, take))
            left -= take
    return credits


def credit_note_issue(
    *,
    invoice: Invoice,
    reason: str,
    method: str,
    actor: str,
    lines: dict[int, Decimal] | None = None,
    amount: Decimal | None = None,
    memo: str = "",
    description: str = "",
) -> CreditNote:
    """Issue a credit note. ``memo`` is for staff; ``description`` is what the customer
    reads (default: "Credit for <invoice number>")."""
    if reason not in CreditNoteReason.values:
        raise CreditNoteError(
            "invalid_request",
            f"reason must be one of {', '.join(CreditNoteReason.values)}",
            "reason",
        )
    if method not in CreditNoteMethod.values:
        raise CreditNoteError(
            "invalid_request",
            f"method must be one of {', '.join(CreditNoteMethod.values)}",
            "method",
        )
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)  # one credit note at a time
        credits = credit_note_preview(invoice=locked, lines=lines, amount=amount)
        note = CreditNote.objects.create(
            invoice=locked,
            number=invoice_number_next("CN-"),
            reason=reason,
            method=method,
            memo=memo,
            description=description.strip() or credit_note_description(locked),
            total=sum((c.amount for c in credits), ZERO),
            total_currency=locked.currency,
            actor=actor,
        )
        CreditNoteLine.objects.bulk_create(
            CreditNoteLine(
                credit_note=note,
                invoice_line=c.line,
                amount=c.amount,
                amount_currency=locked.currency,
                description=c.line.description,
            )
            for c in credits
        )
        if method == CreditNoteMethod.REFUND:
            _void_refunded_pack(locked, note, actor)
        credit_note_issued.send(sender=CreditNote, credit_note=note)
    return note


def credit_note_description(invoice: Invoice) -> str:
    return f"Credit for {invoice.number}"


def refunded_pack_credits(invoice: Invoice, credited_lines: list[InvoiceLine]) -> Decimal | None:
    """The unused credits a refund of these lines would void (None: no pack among them)."""
    purchase = getattr(invoice, "purchase", None)
    if purchase is None or purchase.grant is None:
        return None
    if not any(line.kind == LineKind.CREDIT_PACK for line in credited_lines):
        return None
    grant = purchase.grant
    if grant.status not in (GrantStatus.ACTIVE, GrantStatus.DEPLETED):
        return None
    return grant.remaining


def _void_refunded_pack(invoice: Invoice, note: CreditNote, actor: str) -> None:
    purchase = getattr(invoice, "purchase", None)
    if purchase is None or purchase.grant is None:
        return
    if not note.lines.filter(invoice_line__kind=LineKind.CREDIT_PACK).exists():
        return
    grant = purchase.grant
    if grant.status in (GrantStatus.ACTIVE, GrantStatus.DEPLETED):
        # The memo names the credit note: revenue finds the void by it.
        ledger.credit_grant_void(
            grant=grant,
            actor=actor,
            reason="credit_note_refund",
            memo=note.number,
            description=f"Credits removed: refund of {invoice.number}",
        )


def credit_note_void(*, credit_note: CreditNote, actor: str) -> CreditNote:
    with transaction.atomic():
        locked = CreditNote.objects.select_for_update().get(pk=credit_note.pk)
        if locked.status == CreditNoteStatus.VOID:
            return locked
        locked.status = CreditNoteStatus.VOID
        locked.voided_at = timezone.now()
        locked.save(update_fields=["status", "voided_at"])
        credit_note_voided.send(sender=CreditNote, credit_note=locked)
    return locked
