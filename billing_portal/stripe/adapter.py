"""The one place that talks to Stripe.

Everything else calls :class:`StripeGateway` with our own rows and gets back plain values;
no other module imports ``stripe``. Every write carries an idempotency key derived from
the row it is about, so a retry after a timeout or a lost response replays Stripe's first
answer instead of creating a second object (Stripe keeps keys for 24 hours). Every
failure leaves as :class:`StripeAdapterError`, whose message is written for staff, and as
:class:`StripeTemporaryError` when trying again later may succeed.

Nothing here writes to our database: callers record the ids this module returns, outside
any transaction that spans the network call.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import stripe
from django.conf import settings
from djmoney.money import Money
from moneyed import get_currency

from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteMethod,
    CreditNoteReason,
    CreditPackPurchase,
    Invoice,
    InvoiceLine,
)
from ledger.errors import DomainError
from plans.models import Customer
from plans.money import as_money

if TYPE_CHECKING:
    from stripe.params import (
        CreditNoteCreateParams,
        CreditNoteCreateParamsLine,
        InvoiceCreateParams,
    )

# Stripe retries a request itself this many times (same idempotency key) before our
# task-level retries with back-off take over.
NETWORK_RETRIES = 2
WEBHOOK_TOLERANCE_SECONDS = 300

CollectionMethod = Literal["send_invoice", "charge_automatically"]

REASONS: dict[str, Literal["duplicate", "fraudulent", "order_change", "product_unsatisfactory"]] = {
    CreditNoteReason.DUPLICATE: "duplicate",
    CreditNoteReason.FRAUDULENT: "fraudulent",
    CreditNoteReason.ORDER_CHANGE: "order_change",
    CreditNoteReason.PRODUCT_UNSATISFACTORY: "product_unsatisfactory",
}


class StripeAdapterError(DomainError):
    """A Stripe call failed; ``str()`` says what happened in words staff can act on."""

    code = "stripe_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        http_status: int | None = None,
        decline_code: str = "",
    ) -> None:
        super().__init__(message, code=code or None)
        self.http_status = http_status
        self.decline_code = decline_code


class StripeTemporaryError(StripeAdapterError):
    """Stripe was unreachable, overloaded or failed internally: the same call may succeed later."""

    retryable = True


class WebhookSignatureInvalid(DomainError):
    """The body of an incoming webhook is not signed by Stripe with our secret."""


@dataclass(frozen=True)
class InvoicePushResult:
    stripe_invoice_id: str
    hosted_invoice_url: str
    status: str
    item_ids: dict[int, str] = field(default_factory=dict)  # our line pk -> Stripe "ii_..."


class CheckoutSession(NamedTuple):
    id: str
    url: str


class PaymentIntentResult(NamedTuple):
    id: str
    status: str


def stripe_enabled() -> bool:
    """False in demo mode: no API key configured, nothing is sent to Stripe."""
    return bool(settings.STRIPE_API_KEY)


def demo_payments_enabled() -> bool:
    """Purchases complete without payment: no Stripe key, and the operator allows it."""
    return not stripe_enabled() and bool(settings.BILLING_DEMO_PAYMENTS)


def gateway_from_settings() -> StripeGateway | None:
    """The gateway for the configured account, or None in demo mode (empty STRIPE_API_KEY)."""
    if not stripe_enabled():
        return None
    return StripeGateway(_client(settings.STRIPE_API_KEY))


@functools.lru_cache(maxsize=4)
def _client(api_key: str) -> stripe.StripeClient:
    # One client per key: its HTTP sessions (and their open connections) are reused.
    return stripe.StripeClient(api_key, max_network_retries=NETWORK_RETRIES)


def minor_units(amount: Money) -> int:
    """Stripe amounts are integers in the currency's minor unit (cents for USD, yen for JPY)."""
    code = str(amount.currency)
    value = Decimal(amount.amount) * get_currency(code).sub_unit
    if value != value.to_integral_value():
        raise StripeAdapterError(
            f"{amount} has more decimal places than {code} allows; round it before sending",
            code="amount_precision",
        )
    return int(value)


def _timestamp(moment: datetime) -> int:
    return int(moment.timestamp())


def _describe(exc: stripe.StripeError) -> str:
    message = exc.user_message or str(exc) or type(exc).__name__
    request = f" (Stripe request {exc.request_id})" if exc.request_id else ""
    return f"{message}{request}"


@contextmanager
def _calling_stripe(action: str) -> Iterator[None]:
    """Turn the library's exceptions into ours, with a sentence that names what we tried."""
    try:
        yield
    except stripe.CardError as exc:
        decline = getattr(exc.error, "decline_code", None) or ""
        raise StripeAdapterError(
            f"{action}: the payment was declined ({decline or exc.code}): {_describe(exc)}",
            code=exc.code or "card_declined",
            http_status=exc.http_status,
            decline_code=decline,
        ) from exc
    except stripe.IdempotencyError as exc:
        raise StripeAdapterError(
            f"{action}: Stripe refused the retry because our record changed since the first "
            f"attempt (same idempotency key, different parameters): {_describe(exc)}",
            code="idempotency_error",
            http_status=exc.http_status,
        ) from exc
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        raise StripeTemporaryError(
            f"{action}: Stripe could not be reached or asked us to slow down; a later "
            f"attempt may succeed: {_describe(exc)}",
            code="stripe_unavailable",
            http_status=exc.http_status,
        ) from exc
    except stripe.AuthenticationError as exc:
        raise StripeAdapterError(
            f"{action}: Stripe refused our API key; check STRIPE_API_KEY: {_describe(exc)}",
            code="stripe_authentication",
            http_status=exc.http_status,
        ) from exc
    except stripe.StripeError as exc:
        status = exc.http_status or 0
        if status >= 500 or status == 409:
            raise StripeTemporaryError(
                f"{action}: Stripe failed on its side ({status}); a later attempt may "
                f"succeed: {_describe(exc)}",
                code=exc.code or "stripe_api_error",
                http_status=status,
            ) from exc
        raise StripeAdapterError(
            f"{action}: Stripe refused the request: {_describe(exc)}",
            code=exc.code or "stripe_invalid_request",
            http_status=status or None,
        ) from exc


def _metadata(**values: object) -> dict[str, str]:
    return {key: str(value) for key, value in values.items()}


class StripeGateway:
    """Our operations, each one or a few Stripe calls with keys derived from our rows."""

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        collection_method: CollectionMethod = "send_invoice",
        days_until_due: int = 30,
    ) -> None:
        # send_invoice by default: Stripe e-mails the hosted invoice and the customer pays
        # it there, which works whether or not a card is on file.
        self._client = client
        self._collection_method: CollectionMethod = collection_method
        self._days_until_due = days_until_due

    # --- customers ------------------------------------------------------------------

    def customer_ensure(self, *, customer: Customer) -> str:
        if customer.stripe_customer_id:
            return customer.stripe_customer_id
        with _calling_stripe(f"Creating the Stripe customer for {customer.external_id}"):
            created = self._client.v1.customers.create(
                {
                    "name": customer.name,
                    "email": customer.email,
                    "metadata": _metadata(
                        customer_id=customer.pk, external_id=customer.external_id
                    ),
                },
                {"idempotency_key": f"customer-{customer.pk}"},
            )
        return created.id

    # --- invoices -------------------------------------------------------------------

    def invoice_push(
        self,
        *,
        invoice: Invoice,
        on_invoice_created: Callable[[str], None] | None = None,
        on_item_created: Callable[[InvoiceLine, str], None] | None = None,
    ) -> InvoicePushResult:
        """Create the invoice as a draft, attach one item per non-zero line, finalize.

        The draft is created first, excluding the customer's pending items, and every item
        names it, so only this invoice's lines end up on it. Ids already on our rows (from
        an attempt that failed half-way) are reused, so a retry after Stripe forgot the
        idempotency keys still adds nothing twice; the callbacks let the caller store each
        id as soon as it exists.
        """
        customer_id = self.customer_ensure(customer=invoice.customer)
        stripe_invoice_id = invoice.stripe_invoice_id
        if stripe_invoice_id:
            existing = self._invoice_retrieve(invoice)
            if existing.status != "draft":
                return self._push_result(existing, _known_item_ids(invoice))
        else:
            stripe_invoice_id = self._invoice_draft_create(invoice, customer_id)
            if on_invoice_created is not None:
                on_invoice_created(stripe_invoice_id)
        item_ids = self._invoice_items_create(
            invoice, customer_id, stripe_invoice_id, on_item_created
        )
        with _calling_stripe(f"Finalizing invoice {invoice.number} in Stripe"):
            final = self._client.v1.invoices.finalize_invoice(
                stripe_invoice_id,
                {"auto_advance": True},
                {"idempotency_key": f"invoice-{invoice.pk}-finalize"},
            )
        return self._push_result(final, item_ids)

    def _invoice_retrieve(self, invoice: Invoice) -> stripe.Invoice:
        with _calling_stripe(f"Reading invoice {invoice.number} from Stripe"):
            return self._client.v1.invoices.retrieve(invoice.stripe_invoice_id)

    def _invoice_draft_create(self, invoice: Invoice, customer_id: str) -> str:
        params: InvoiceCreateParams = {
            "customer": customer_id,
            "currency": invoice.currency.lower(),
            "collection_method": self._collection_method,
            "auto_advance": False,  # finalized by us once every item is on it
            "pending_invoice_items_behavior": "exclude",
            "number": invoice.number,
            "metadata": _metadata(
                invoice_id=invoice.pk,
                invoice_number=invoice.number,
                customer_id=invoice.customer_id,
            ),
        }
        if self._collection_method == "send_invoice":
            params["days_until_due"] = self._days_until_due
        with _calling_stripe(f"Creating invoice {invoice.number} in Stripe"):
            created = self._client.v1.invoices.create(
                params, {"idempotency_key": f"invoice-{invoice.pk}"}
            )
        return created.id

    def _invoice_items_create(
        self,
        invoice: Invoice,
        customer_id: str,
        stripe_invoice_id: str,
        on_item_created: Callable[[InvoiceLine, str], None] | None,
    ) -> dict[int, str]:
        item_ids: dict[int, str] = {}
        for line in invoice.lines.order_by("pk"):
            amount = as_money(line.amount)
            if amount.amount == 0:
                continue  # included usage and other zero lines: shown by us, not billed
            if line.stripe_invoice_item_id:
                item_ids[line.pk] = line.stripe_invoice_item_id
                continue
            with _calling_stripe(f"Adding '{line.description}' to invoice {invoice.number}"):
                item = self._client.v1.invoice_items.create(
                    {
                        "customer": customer_id,
                        "invoice": stripe_invoice_id,
                        "amount": minor_units(amount),
                        "currency": str(amount.currency).lower(),
                        "description": line.description,
                        "period": {
                            "start": _timestamp(line.service_period_start),
                            "end": _timestamp(line.service_period_end),
                        },
                        "metadata": _metadata(
                            invoice_id=invoice.pk, invoice_line_id=line.pk, line_kind=line.kind
                        ),
                    },
                    {"idempotency_key": f"invoice-line-{line.pk}"},
                )
            item_ids[line.pk] = item.id
            if on_item_created is not None:
                on_item_created(line, item.id)
        return item_ids

    @staticmethod
    def _push_result(stripe_invoice: stripe.Invoice, item_ids: dict[int, str]) -> InvoicePushResult:
        return InvoicePushResult(
            stripe_invoice_id=stripe_invoice.id,
            hosted_invoice_url=stripe_invoice.hosted_invoice_url or "",
            status=stripe_invoice.status or "",
            item_ids=item_ids,
        )

    def invoice_void(self, *, invoice: Invoice) -> str:
        with _calling_stripe(f"Voiding invoice {invoice.number} in Stripe"):
            voided = self._client.v1.invoices.void_invoice(
                _require_id(invoice.stripe_invoice_id, f"invoice {invoice.number}"),
                options={"idempotency_key": f"invoice-{invoice.pk}-void"},
            )
        return voided.status or ""

    # --- credit notes and refunds ---------------------------------------------------

    def credit_note_create(self, *, credit_note: CreditNote) -> str:
        """A Stripe credit note on the invoice, line by line where Stripe knows the lines.

        Stripe only accepts refund/credit/out-of-band amounts on a paid invoice; on an open
        one the credit note lowers what is due. Stripe's own status decides, since our row
        may not have heard of the payment yet.
        """
        invoice = credit_note.invoice
        stripe_invoice = self._invoice_retrieve(invoice)
        total = minor_units(as_money(credit_note.total))
        params: CreditNoteCreateParams = {
            "invoice": stripe_invoice.id,
            "reason": REASONS[credit_note.reason],
            "metadata": _metadata(credit_note_id=credit_note.pk, number=credit_note.number),
        }
        # Stripe prints its memo on the customer's credit note: the customer-facing
        # description goes there, never staff's internal memo.
        if credit_note.description:
            params["memo"] = credit_note.description
        lines = self._credit_note_lines(credit_note)
        if lines:
            params["lines"] = lines
        else:
            params["amount"] = total
        if stripe_invoice.status == "paid":
            _settle_paid(params, credit_note.method, total)
        with _calling_stripe(f"Issuing credit note {credit_note.number} in Stripe"):
            created = self._client.v1.credit_notes.create(
                params, {"idempotency_key": f"credit-note-{credit_note.pk}"}
            )
        return created.id

    def _credit_note_lines(self, credit_note: CreditNote) -> list[CreditNoteCreateParamsLine]:
        """Our lines as Stripe invoice-line credits, or [] to credit a plain amount instead."""
        ours = list(credit_note.lines.select_related("invoice_line").order_by("pk"))
        if not ours:
            return []
        stripe_lines = self._invoice_line_ids(credit_note.invoice)
        lines: list[CreditNoteCreateParamsLine] = []
        for line in ours:
            stripe_line = stripe_lines.get(line.invoice_line.stripe_invoice_item_id)
            if stripe_line is None:
                return []  # a line Stripe does not have (e.g. zero-priced): credit the amount
            lines.append(
                {
                    "type": "invoice_line_item",
                    "invoice_line_item": stripe_line,
                    "amount": minor_units(as_money(line.amount)),
                }
            )
        return lines

    def _invoice_line_ids(self, invoice: Invoice) -> dict[str, str]:
        """Stripe invoice line ("il_...") per invoice item ("ii_...") on the invoice."""
        found: dict[str, str] = {}
        with _calling_stripe(f"Reading the lines of invoice {invoice.number} from Stripe"):
            page = self._client.v1.invoices.line_items.list(
                invoice.stripe_invoice_id, {"limit": 100}
            )
            for item in page.auto_paging_iter():
                details = item.parent.invoice_item_details if item.parent else None
                if details is not None and details.invoice_item:
                    found[details.invoice_item] = item.id
        return found

    def credit_note_void(self, *, credit_note: CreditNote) -> str:
        with _calling_stripe(f"Voiding credit note {credit_note.number} in Stripe"):
            voided = self._client.v1.credit_notes.void_credit_note(
                _require_id(credit_note.stripe_credit_note_id, f"credit note {credit_note.number}"),
                options={"idempotency_key": f"credit-note-{credit_note.pk}-void"},
            )
        return voided.status

    def refund_create(self, *, credit_note: CreditNote, payment_intent_id: str) -> str:
        """Money back on a payment that had no Stripe invoice (a credit pack)."""
        with _calling_stripe(f"Refunding credit note {credit_note.number} in Stripe"):
            refund = self._client.v1.refunds.create(
                {
                    "payment_intent": payment_intent_id,
                    "amount": minor_units(as_money(credit_note.total)),
                    "metadata": _metadata(credit_note_id=credit_note.pk, number=credit_note.number),
                },
                {"idempotency_key": f"credit-note-{credit_note.pk}-refund"},
            )
        return refund.id

    # --- credit pack payments -------------------------------------------------------

    def checkout_session_create(
        self, *, purchase: CreditPackPurchase, success_url: str, cancel_url: str
    ) -> CheckoutSession:
        customer_id = self.customer_ensure(customer=purchase.customer)
        price = as_money(purchase.price)
        metadata = _metadata(purchase_id=purchase.pk, invoice_number=purchase.invoice.number)
        with _calling_stripe(f"Starting checkout for purchase {purchase.pk}"):
            session = self._client.v1.checkout.sessions.create(
                {
                    "mode": "payment",
                    "customer": customer_id,
                    "client_reference_id": str(purchase.pk),
                    "line_items": [
                        {
                            "quantity": 1,
                            "price_data": {
                                "currency": str(price.currency).lower(),
                                "unit_amount": minor_units(price),
                                "product_data": {"name": purchase.pack.name},
                            },
                        }
                    ],
                    "metadata": metadata,
                    # Saved for later off-session charges (auto-recharge).
                    "payment_intent_data": {
                        "metadata": metadata,
                        "setup_future_usage": "off_session",
                    },
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                },
                {"idempotency_key": f"purchase-{purchase.pk}-checkout"},
            )
        return CheckoutSession(session.id, session.url or "")

    def payment_intent_create(
        self,
        *,
        purchase: CreditPackPurchase,
        off_session: bool = True,
        payment_method: str | None = None,
    ) -> PaymentIntentResult:
        """Charge a saved payment method now; a decline is a StripeAdapterError, not temporary."""
        customer_id = self.customer_ensure(customer=purchase.customer)
        method = payment_method or self._saved_payment_method(customer_id)
        price = as_money(purchase.price)
        with _calling_stripe(f"Charging purchase {purchase.pk}"):
            intent = self._client.v1.payment_intents.create(
                {
                    "amount": minor_units(price),
                    "currency": str(price.currency).lower(),
                    "customer": customer_id,
                    "payment_method": method,
                    "confirm": True,
                    "off_session": off_session,
                    "description": f"{purchase.pack.name} ({purchase.invoice.number})",
                    "metadata": _metadata(
                        purchase_id=purchase.pk, invoice_number=purchase.invoice.number
                    ),
                },
                {"idempotency_key": f"purchase-{purchase.pk}-intent"},
            )
        return PaymentIntentResult(intent.id, intent.status)

    def _saved_payment_method(self, customer_id: str) -> str:
        """The customer's default payment method, else the one saved most recently."""
        with _calling_stripe("Looking up the customer's saved payment method"):
            customer = self._client.v1.customers.retrieve(customer_id)
            settings_ = customer.invoice_settings
            default = settings_.default_payment_method if settings_ else None
            if default:
                return default if isinstance(default, str) else default.id
            saved = self._client.v1.customers.payment_methods.list(customer_id, {"limit": 1})
        if not saved.data:
            raise StripeAdapterError(
                "The customer has no saved payment method in Stripe; they need to buy a pack "
                "through checkout once before packs can be charged automatically",
                code="no_payment_method",
            )
        return saved.data[0].id


def _settle_paid(params: CreditNoteCreateParams, method: str, total: int) -> None:
    """On a paid invoice, our method says where the credited money goes."""
    if method == CreditNoteMethod.REFUND:
        params["refund_amount"] = total
    elif method == CreditNoteMethod.CUSTOMER_CREDIT:
        params["credit_amount"] = total
    else:
        params["out_of_band_amount"] = total


def _known_item_ids(invoice: Invoice) -> dict[int, str]:
    return {
        line.pk: line.stripe_invoice_item_id
        for line in invoice.lines.exclude(stripe_invoice_item_id="")
    }


def _require_id(stripe_id: str, what: str) -> str:
    if not stripe_id:
        raise StripeAdapterError(f"{what} has no Stripe id yet: it was never sent to Stripe")
    return stripe_id


# --- webhooks ---------------------------------------------------------------------------


def webhook_event_verify(
    *, payload: bytes, signature: str | None, secret: str
) -> Mapping[str, Any]:
    """The event in a webhook body, once Stripe's signature over it checks out.

    The library's own verifier compares the HMAC in constant time and refuses a timestamp
    older than the tolerance, so a captured request cannot be replayed later.
    """
    if not secret:
        raise WebhookSignatureInvalid(
            "STRIPE_WEBHOOK_SECRET is not set, so no webhook can be verified"
        )
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, WEBHOOK_TOLERANCE_SECONDS)
        event = json.loads(payload)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureInvalid(str(exc)) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookSignatureInvalid("the body is not JSON") from exc
    if not isinstance(event, dict):
        raise WebhookSignatureInvalid("the body is not a Stripe event")
    return event
