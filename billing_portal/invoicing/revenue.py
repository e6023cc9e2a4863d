"""Revenue recognition, following the domain rules:

* a pack payment, or paid credits granted any other way (at their cost basis), is
  deferred revenue (a liability) until its credits are used;
* paid credits are recognized as they are consumed, at their cost basis per credit;
* paid credits that expire or are voided unused are breakage (recognized then), except
  those voided by a refund, which leave the deferred balance as cash goes back;
* base fees and prorations are recognized ratably by day over their service period;
* overage (and late usage) is recognized at the end of its period;
* credit notes reverse what they credit.

Every entry has a unique key derived from its source, so running recognition again
writes nothing twice. Amounts keep 8 decimal places; only reports round.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q, Sum

from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteLine,
    CreditNoteMethod,
    InvoiceLine,
    LineKind,
    RevenueEntry,
    RevenueKind,
)
from ledger.models import ZERO, EntryKind, GrantCategory, LedgerEntry
from plans.money import as_money

EIGHT = Decimal("0.00000001")
RATABLE = {LineKind.BASE_FEE, LineKind.PRORATION}
# Money that usage owes once the period is over; a tiered rate's true-up may be negative
# (credits given back off the overage).
AT_PERIOD_END = {LineKind.OVERAGE, LineKind.PRIOR_PERIOD_ADJUSTMENT, LineKind.TIER_TRUE_UP}


def _write(entries: list[RevenueEntry]) -> int:
    written = 0
    for entry in entries:
        try:
            with transaction.atomic():
                entry.save()
            written += 1
        except IntegrityError:
            continue  # already recognized (the unique key)
    return written


def revenue_for_line(*, line: InvoiceLine) -> int:
    """Entries for one invoice line: ratable, at period end, or deferred (packs)."""
    amount = as_money(line.amount).amount
    currency = str(as_money(line.amount).currency)
    customer_id = line.invoice.customer_id
    if amount == 0:
        return 0
    if line.kind in RATABLE:
        return _write(_ratably(line, amount, currency, customer_id))
    if line.kind in AT_PERIOD_END:
        # The period's last day: its end is the (exclusive) start of the next one.
        end = line.invoice.period_end or line.service_period_end
        day = (end - timedelta(microseconds=1)).date()
        return _write(
            [
                _entry(
                    customer_id,
                    RevenueKind.OVERAGE,
                    day,
                    amount,
                    currency,
                    f"line-{line.pk}",
                    invoice_line=line,
                )
            ]
        )
    if line.kind == LineKind.CREDIT_PACK:
        day = (line.invoice.purchase.paid_at or line.created_at).date()
        return _write(
            [
                _entry(
                    customer_id,
                    RevenueKind.DEFERRED,
                    day,
                    ZERO,
                    currency,
                    f"line-{line.pk}",
                    deferred=amount,
                    invoice_line=line,
                )
            ]
        )
    return 0


def _ratably(
    line: InvoiceLine, amount: Decimal, currency: str, customer_id: int
) -> list[RevenueEntry]:
    days = _days(line.service_period_start, line.service_period_end)
    share = (amount / len(days)).quantize(EIGHT)
    entries = []
    for index, day in enumerate(days):
        # The last day takes the remainder, so the days add up to the line exactly.
        value = amount - share * (len(days) - 1) if index == len(days) - 1 else share
        entries.append(
            _entry(
                customer_id,
                RevenueKind.BASE_FEE,
                day,
                value,
                currency,
                f"line-{line.pk}-{day:%Y%m%d}",
                invoice_line=line,
            )
        )
    return entries


def _days(start: datetime, end: datetime) -> list[date]:
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _entry(
    customer_id: int,
    kind: str,
    day: date,
    amount: Decimal,
    currency: str,
    key: str,
    *,
    deferred: Decimal = ZERO,
    invoice_line: InvoiceLine | None = None,
    ledger_entry: LedgerEntry | None = None,
    credit_note_line: CreditNoteLine | None = None,
) -> RevenueEntry:
    return RevenueEntry(
        customer_id=customer_id,
        kind=kind,
        recognized_on=day,
        amount=amount,
        amount_currency=currency,
        deferred_change=deferred,
        deferred_change_currency=currency,
        invoice_line=invoice_line,
        ledger_entry=ledger_entry,
        credit_note_line=credit_note_line,
        key=key,
    )


# A pack's credits are deferred by the pack's invoice line (the payment); paid credits
# granted any other way (the API, staff) are deferred when granted, at their cost basis.
PACK_SOURCE = "credit_pack_purchase"


def revenue_recognize_credits(*, limit: int = 5000) -> int:
    """Grants (outside packs), consumption, expiry and voids of paid credits not yet
    recognized."""
    movements = Q(
        kind__in=[EntryKind.CONSUME, EntryKind.EXPIRE, EntryKind.VOID, EntryKind.REVERSAL]
    ) | (Q(kind=EntryKind.GRANT) & ~Q(grant__source_type=PACK_SOURCE))
    pending = (
        LedgerEntry.objects.filter(movements, grant__category=GrantCategory.PAID)
        .exclude(Exists(RevenueEntry.objects.filter(ledger_entry=OuterRef("pk"))))
        .select_related("grant", "operation", "grant__account__customer")
        .order_by("pk")[:limit]
    )
    return _write([_credit_entry(entry) for entry in pending])


def _credit_entry(entry: LedgerEntry) -> RevenueEntry:
    assert entry.grant is not None
    basis = as_money(entry.grant.cost_basis)
    value = (-entry.credits * basis.amount).quantize(EIGHT)
    customer_id = entry.grant.account.customer.pk
    refund = entry.kind == EntryKind.VOID and entry.operation.reason == "credit_note_refund"
    if entry.kind == EntryKind.GRANT:
        kind, amount = RevenueKind.DEFERRED, ZERO  # paid for, not yet used
    elif refund:
        kind, amount = RevenueKind.CREDIT_NOTE, ZERO  # the cash goes back: not revenue
    elif entry.kind in (EntryKind.EXPIRE, EntryKind.VOID):
        kind, amount = RevenueKind.BREAKAGE, value
    else:
        kind, amount = RevenueKind.RECOGNIZED_USAGE, value  # a reversal gives it back
    return _entry(
        customer_id,
        kind,
        entry.created_at.date(),
        amount,
        str(basis.currency),
        f"entry-{entry.pk}",
        deferred=-value,
        ledger_entry=entry,
    )


def revenue_for_credit_note(*, credit_note: CreditNote) -> int:
    """Reverse the revenue a credit note takes back.

    On a refunded pack, the unused credits' deferred value already left with the void
    of those credits; only the rest of the refund reverses revenue already recognized.
    """
    released = _released_by_refund(credit_note)
    entries = []
    for line in credit_note.lines.select_related("invoice_line"):
        amount = as_money(line.amount).amount
        if line.invoice_line.kind == LineKind.CREDIT_PACK:
            if credit_note.method != CreditNoteMethod.REFUND:
                continue  # a customer credit on a pack changes no revenue already earned
            taken_back, released = max(ZERO, amount - released), max(ZERO, released - amount)
        else:
            taken_back = amount
        entries.append(
            _entry(
                credit_note.invoice.customer_id,
                RevenueKind.CREDIT_NOTE,
                credit_note.created_at.date(),
                -taken_back,
                str(as_money(line.amount).currency),
                f"cn-line-{line.pk}",
                credit_note_line=line,
            )
        )
    return _write(entries)


def _released_by_refund(credit_note: CreditNote) -> Decimal:
    voids = LedgerEntry.objects.filter(
        kind=EntryKind.VOID,
        operation__reason="credit_note_refund",
        operation__memo=credit_note.number,
    ).select_related("grant")
    return sum(
        (
            (-e.credits * as_money(e.grant.cost_basis).amount).quantize(EIGHT)
            for e in voids
            if e.grant
        ),
        ZERO,
    )


def revenue_recognize_all() -> int:
    """Everything not yet recognized; safe to run at any time, any number of times."""
    written = revenue_recognize_credits()
    lines = (
        InvoiceLine.objects.filter(invoice__status__in=["open", "paid"])
        .exclude(Exists(RevenueEntry.objects.filter(invoice_line=OuterRef("pk"))))
        .exclude(
            kind=LineKind.CREDIT_PACK,
            invoice__purchase__status__in=["pending", "failed", "canceled"],
        )
        .select_related("invoice", "invoice__purchase")
    )
    for line in lines[:2000]:
        written += revenue_for_line(line=line)
    notes = CreditNote.objects.filter(status="issued").exclude(
        Exists(RevenueEntry.objects.filter(credit_note_line__credit_note=OuterRef("pk")))
    )
    for note in notes[:500]:
        written += revenue_for_credit_note(credit_note=note)
    return written


@dataclass(frozen=True)
class RevenueReport:
    month: date
    recognized: dict[str, Decimal]
    deferred_balance: Decimal
    currency: str


def revenue_report(*, month: date) -> RevenueReport:
    start = month.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    rows = (
        RevenueEntry.objects.filter(recognized_on__gte=start, recognized_on__lt=end)
        .values("kind")
        .annotate(total=Sum("amount"))
    )
    recognized: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for row in rows:
        recognized[row["kind"]] += row["total"] or ZERO
    deferred = RevenueEntry.objects.filter(recognized_on__lt=end).aggregate(
        total=Sum("deferred_change")
    )["total"]
    currency = RevenueEntry.objects.values_list("amount_currency", flat=True).first() or "USD"
    return RevenueReport(
        month=start,
        recognized=dict(recognized),
        deferred_balance=deferred or ZERO,
        currency=currency,
    )
