"""A stateful stand-in for Stripe's HTTP API, plugged into the real library.

``StripeClient(api_key="sk_test_...", http_client=FakeStripe())`` sends every request
here instead of the network: the library encodes parameters, sets headers and parses
answers exactly as it would against Stripe, and this class answers in Stripe's shapes
(ids such as ``in_...``, list objects, ``{"error": {...}}`` bodies with 4xx statuses).

It keeps the objects it creates, checks what Stripe checks for the calls our adapter
makes, records every request (method, path, decoded form body, Idempotency-Key) and
honours idempotency keys as Stripe does: the same key with the same parameters replays
the first answer without creating anything; with other parameters it is a 400
``idempotency_error``. Failures can be injected: a 500 or a connection error before the
request is handled (nothing happens), or a lost response after it was handled (the
object exists, the client never heard).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import stripe
from django.urls import path

from billing_portal.stripe.webhooks import stripe_webhook

API_KEY = "sk_test_fake_key"

Failure = Literal["server_error", "connection", "lost_response", "rate_limit"]
Answer = tuple[int, dict[str, Any]]

_event_ids = itertools.count(1)


class StripeRefusal(Exception):
    """Raised by a handler: becomes Stripe's error body with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        body: dict[str, Any] = {"type": type, "message": message}
        if code:
            body["code"] = code
        if param:
            body["param"] = param
        body.update(extra)
        self.status = status
        self.body = {"error": body}


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any]  # decoded, nested as the library sent it; values are strings
    form: dict[str, str]  # the flat form fields, e.g. {"metadata[invoice_id]": "7"}
    idempotency_key: str | None
    status: int | None = None  # None: the client got no answer (connection error)
    replayed: bool = False


@dataclass
class _Injected:
    kind: Failure
    method: str | None
    path: re.Pattern[str] | None
    skip: int
    times: int


@dataclass
class _Saved:
    method: str
    path: str
    form: list[tuple[str, str]]
    answer: Answer


class FakeStripe(stripe.HTTPClient):
    name = "fake_stripe"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []
        self.customers: dict[str, dict[str, Any]] = {}
        self.invoice_items: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.credit_notes: dict[str, dict[str, Any]] = {}
        self.checkout_sessions: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._saved: dict[str, _Saved] = {}
        self._session_intent_metadata: dict[str, dict[str, Any]] = {}
        self._injected: list[_Injected] = []
        routes: list[tuple[str, str, Callable[..., Answer]]] = [
            ("POST", r"/v1/customers", self._customer_create),
            ("GET", r"/v1/customers/(cus_\w+)", self._customer_get),
            ("GET", r"/v1/customers/(cus_\w+)/payment_methods", self._customer_methods),
            ("POST", r"/v1/invoiceitems", self._invoice_item_create),
            ("POST", r"/v1/invoices", self._invoice_create),
            ("GET", r"/v1/invoices/(in_\w+)", self._invoice_get),
            ("GET", r"/v1/invoices/(in_\w+)/lines", self._invoice_lines),
            ("POST", r"/v1/invoices/(in_\w+)/finalize", self._invoice_finalize),
            ("POST", r"/v1/invoices/(in_\w+)/void", self._invoice_void),
            ("POST", r"/v1/invoices/(in_\w+)/pay", self._invoice_pay),
            ("POST", r"/v1/credit_notes", self._credit_note_create),
            ("POST", r"/v1/credit_notes/(cn_\w+)/void", self._credit_note_void),
            ("POST", r"/v1/checkout/sessions", self._checkout_create),
            ("POST", r"/v1/payment_intents", self._payment_intent_create),
            ("POST", r"/v1/refunds", self._refund_create),
        ]
        self._routes = [(method, re.compile(f"^{path}$"), run) for method, path, run in routes]

    # --- what tests use -------------------------------------------------------------

    def fail(
        self,
        kind: Failure = "server_error",
        *,
        method: str | None = "POST",
        path: str | None = None,
        nth: int = 1,
        times: int = 1,
    ) -> None:
        """Fail the ``nth`` next matching request (``times`` in a row from there)."""
        pattern = re.compile(f"^{path}$") if path else None
        self._injected.append(_Injected(kind, method, pattern, nth - 1, times))

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        pattern = re.compile(f"^{path}$") if path else None
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (pattern is None or pattern.match(r.path))
        ]

    def payment_method_save(
        self, customer_id: str, method_id: str = "pm_card_visa", *, default: bool = False
    ) -> None:
        self.payment_methods[method_id] = {
            "id": method_id,
            "object": "payment_method",
            "type": "card",
            "customer": customer_id,
        }
        if default:
            self.customers[customer_id]["invoice_settings"]["default_payment_method"] = method_id

    def checkout_pay(self, session_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The customer pays on the checkout page: the session completes, a payment
        intent succeeds. Returns both, as the webhooks would carry them."""
        session = self.checkout_sessions[session_id]
        intent = self._intent(
            amount=session["amount_total"],
            currency=session["currency"],
            customer=session["customer"],
            metadata=self._session_intent_metadata[session_id],
            status="succeeded",
        )
        session.update(status="complete", payment_status="paid", payment_intent=intent["id"])
        return session, intent

    def invoice_mark_paid(self, invoice_id: str) -> dict[str, Any]:
        return self._invoice_pay(invoice_id, {})[1]

    # --- the HTTP client interface --------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        headers: Any,
        post_data: Any = None,
        *,
        _usage: Any = None,
    ) -> tuple[str, int, dict[str, str]]:
        method = method.upper()
        parts = urlsplit(url)
        raw = post_data if method == "POST" else parts.query
        form = parse_qsl(raw.decode() if isinstance(raw, bytes) else raw or "")
        key = (headers or {}).get("Idempotency-Key")
        record = Request(method, parts.path, _nest(form), dict(form), key)
        self.requests.append(record)
        injected = self._take_injected(method, parts.path)
        if injected in ("connection", "server_error", "rate_limit"):
            return self._edge_failure(record, injected)
        status, body, replayed = self._answer(record, form, headers or {})
        if injected == "lost_response":
            raise stripe.APIConnectionError(
                "Network error: the connection was reset before the response arrived",
                should_retry=True,
            )
        record.status, record.replayed = status, replayed
        response_headers = {"Request-Id": f"req_fake{len(self.requests):06d}"}
        if key:
            response_headers["Idempotency-Key"] = key
        if replayed:
            response_headers["Idempotent-Replayed"] = "true"
        return json.dumps(body), status, response_headers

    def close(self) -> None:
        pass

    def _take_injected(self, method: str, path: str) -> Failure | None:
        for injected in self._injected:
            if injected.method not in (None, method):
                continue
            if injected.path is not None and not injected.path.match(path):
                continue
            if injected.skip:
                injected.skip -= 1
                return None
            injected.times -= 1
            if injected.times == 0:
                self._injected.remove(injected)
            return injected.kind
        return None

    def _edge_failure(self, record: Request, kind: Failure) -> tuple[str, int, dict[str, str]]:
        # Refused before reaching Stripe's idempotency layer: nothing saved, nothing made.
        if kind == "connection":
            raise stripe.APIConnectionError(
                "Could not connect to Stripe (fake): connection refused", should_retry=True
            )
        if kind == "rate_limit":
            record.status = 429
            body = {
                "error": {
                    "type": "invalid_request_error",
                    "code": "rate_limit",
                    "message": "Too many requests hit the API too quickly.",
                }
            }
            return json.dumps(body), 429, {}
        record.status = 500
        body = {"error": {"type": "api_error", "message": "An unknown error occurred (fake)."}}
        return json.dumps(body), 500, {}

    def _answer(
        self, record: Request, form: list[tuple[str, str]], headers: Any
    ) -> tuple[int, dict[str, Any], bool]:
        if not str(headers.get("Authorization", "")).startswith("Bearer sk_test_"):
            return (
                401,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": "Invalid API Key provided.",
                    }
                },
                False,
            )
        key = record.idempotency_key if record.method == "POST" else None
        saved = self._saved.get(key) if key else None
        if saved is not None:
            if (saved.method, saved.path, sorted(saved.form)) != (
                record.method,
                record.path,
                sorted(form),
            ):
                refusal = StripeRefusal(
                    400,
                    f"Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    "meant to execute a different request.",
                    type="idempotency_error",
                )
                return refusal.status, refusal.body, False
            return saved.answer[0], saved.answer[1], True
        status, body = self._route(record)
        if key and (200 <= status < 300 or status == 402):
            # Stripe saves the result of every request that started executing.
            self._saved[key] = _Saved(record.method, record.path, form, (status, body))
        return status, body, False

    def _route(self, record: Request) -> Answer:
        for method, pattern, handler in self._routes:
            match = pattern.match(record.path)
            if method == record.method and match:
                try:
                    return handler(*match.groups(), record.params)
                except StripeRefusal as refusal:
                    return refusal.status, refusal.body
        return 404, {
            "error": {
                "type": "invalid_request_error",
                "message": f"Unrecognized request URL ({record.method}: {record.path}).",
            }
        }

    # --- objects --------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):08d}"

    def _get(self, collection: dict[str, dict[str, Any]], what: str, obj_id: str) -> dict[str, Any]:
        if obj_id not in collection:
            raise StripeRefusal(
                404, f"No such {what}: '{obj_id}'", code="resource_missing", param="id"
            )
        return collection[obj_id]

    def _customer_for(self, params: dict[str, Any]) -> str:
        customer = params.get("customer")
        if customer not in self.customers:
            raise StripeRefusal(
                400, f"No such customer: '{customer}'", code="resource_missing", param="customer"
            )
        return str(customer)

    def _customer_create(self, params: dict[str, Any]) -> Answer:
        customer = {
            "id": self._new_id("cus"),
            "object": "customer",
            "name": params.get("name"),
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
            "invoice_settings": {"default_payment_method": None},
            "created": int(time.time()),
            "livemode": False,
        }
        self.customers[customer["id"]] = customer
        return 200, customer

    def _customer_get(self, customer_id: str, params: dict[str, Any]) -> Answer:
        return 200, self._get(self.customers, "customer", customer_id)

    def _customer_methods(self, customer_id: str, params: dict[str, Any]) -> Answer:
        self._get(self.customers, "customer", customer_id)
        found = [m for m in self.payment_methods.values() if m["customer"] == customer_id]
        found.reverse()  # newest first
        limit = int(params.get("limit", 10))
        return 200, _list(found[:limit], f"/v1/customers/{customer_id}/payment_methods")

    def _invoice_item_create(self, params: dict[str, Any]) -> Answer:
        customer = self._customer_for(params)
        amount = _integer(params, "amount")
        invoice = None
        if params.get("invoice"):
            invoice = self._get(self.invoices, "invoice", params["invoice"])
            if invoice["customer"] != customer:
                raise StripeRefusal(
                    400, "The invoice belongs to another customer.", param="invoice"
                )
            if invoice["status"] != "draft":
                raise StripeRefusal(
                    400,
                    f"You can only add invoice items to draft invoices; {invoice['id']} is "
                    f"{invoice['status']}.",
                    param="invoice",
                )
        period = params.get("period") or {}
        item = {
            "id": self._new_id("ii"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": _required(params, "currency"),
            "customer": customer,
            "description": params.get("description"),
            "invoice": invoice["id"] if invoice else None,
            "metadata": params.get("metadata", {}),
            "period": {"start": int(period.get("start", 0)), "end": int(period.get("end", 0))},
            "livemode": False,
        }
        self.invoice_items[item["id"]] = item
        if invoice is not None:
            self._invoice_add_line(invoice, item)
        return 200, item

    def _invoice_add_line(self, invoice: dict[str, Any], item: dict[str, Any]) -> None:
        line = {
            "id": self._new_id("il"),
            "object": "line_item",
            "amount": item["amount"],
            "currency": item["currency"],
            "description": item["description"],
            "invoice": invoice["id"],
            "metadata": item["metadata"],
            "period": item["period"],
            "parent": {
                "type": "invoice_item_details",
                "invoice_item_details": {"invoice_item": item["id"], "proration": False},
                "subscription_item_details": None,
            },
        }
        invoice["lines"]["data"].append(line)
        invoice["lines"]["total_count"] = len(invoice["lines"]["data"])
        total = sum(each["amount"] for each in invoice["lines"]["data"])
        invoice.update(subtotal=total, total=total, amount_due=total, amount_remaining=total)

    def _invoice_create(self, params: dict[str, Any]) -> Answer:
        customer = self._customer_for(params)
        collection = params.get("collection_method", "charge_automatically")
        if collection == "send_invoice" and not (
            params.get("days_until_due") or params.get("due_date")
        ):
            raise StripeRefusal(
                400,
                "Invoices with collection_method=send_invoice need days_until_due or due_date.",
                param="days_until_due",
            )
        number = params.get("number")
        if number and any(i["number"] == number for i in self.invoices.values()):
            raise StripeRefusal(400, f"Invoice number {number} is already used.", param="number")
        invoice_id = self._new_id("in")
        invoice: dict[str, Any] = {
            "id": invoice_id,
            "object": "invoice",
            "customer": customer,
            "currency": _required(params, "currency"),
            "collection_method": collection,
            "days_until_due": int(params["days_until_due"]) if "days_until_due" in params else None,
            "auto_advance": params.get("auto_advance") != "false",
            "number": number,
            "description": params.get("description"),
            "metadata": params.get("metadata", {}),
            "status": "draft",
            "hosted_invoice_url": None,
            "lines": _list([], f"/v1/invoices/{invoice_id}/lines"),
            "subtotal": 0,
            "total": 0,
            "amount_due": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "status_transitions": {"finalized_at": None, "paid_at": None, "voided_at": None},
            "livemode": False,
        }
        self.invoices[invoice_id] = invoice
        if params.get("pending_invoice_items_behavior", "exclude") == "include":
            for item in self.invoice_items.values():
                if item["customer"] == customer and item["invoice"] is None:
                    item["invoice"] = invoice_id
                    self._invoice_add_line(invoice, item)
        return 200, invoice

    def _invoice_get(self, invoice_id: str, params: dict[str, Any]) -> Answer:
        return 200, self._get(self.invoices, "invoice", invoice_id)

    def _invoice_lines(self, invoice_id: str, params: dict[str, Any]) -> Answer:
        invoice = self._get(self.invoices, "invoice", invoice_id)
        limit = int(params.get("limit", 10))
        return 200, _list(invoice["lines"]["data"][:limit], f"/v1/invoices/{invoice_id}/lines")

    def _invoice_finalize(self, invoice_id: str, params: dict[str, Any]) -> Answer:
        invoice = self._get(self.invoices, "invoice", invoice_id)
        if invoice["status"] != "draft":
            raise StripeRefusal(
                400,
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_not_editable",
            )
        invoice["number"] = invoice["number"] or f"FAKE-{next(self._ids):04d}"
        invoice["status"] = "open" if invoice["amount_due"] > 0 else "paid"
        invoice["hosted_invoice_url"] = f"https://invoice.stripe.com/i/acct_fake/{invoice_id}"
        invoice["status_transitions"]["finalized_at"] = int(time.time())
        if "auto_advance" in params:
            invoice["auto_advance"] = params["auto_advance"] == "true"
        return 200, invoice

    def _invoice_void(self, invoice_id: str, params: dict[str, Any]) -> Answer:
        invoice = self._get(self.invoices, "invoice", invoice_id)
        if invoice["status"] not in ("open", "uncollectible"):
            raise StripeRefusal(
                400, f"You can only void an open invoice; {invoice_id} is {invoice['status']}."
            )
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = int(time.time())
        return 200, invoice

    def _invoice_pay(self, invoice_id: str, params: dict[str, Any]) -> Answer:
        invoice = self._get(self.invoices, "invoice", invoice_id)
        if invoice["status"] != "open":
            raise StripeRefusal(400, f"Invoice {invoice_id} is {invoice['status']}, not open.")
        invoice.update(status="paid", amount_paid=invoice["amount_due"], amount_remaining=0)
        invoice["status_transitions"]["paid_at"] = int(time.time())
        return 200, invoice

    def _credit_note_create(self, params: dict[str, Any]) -> Answer:
        invoice = self._get(self.invoices, "invoice", _required(params, "invoice"))
        if invoice["status"] not in ("open", "paid"):
            raise StripeRefusal(
                400,
                f"Credit notes need a finalized invoice; {invoice['id']} is {invoice['status']}.",
                param="invoice",
            )
        reason = params.get("reason")
        if reason not in (
            None,
            "duplicate",
            "fraudulent",
            "order_change",
            "product_unsatisfactory",
        ):
            raise StripeRefusal(400, f"Invalid reason: {reason}", param="reason")
        lines = [self._credit_note_line(invoice, line) for line in params.get("lines", [])]
        amount = sum(line["amount"] for line in lines) if lines else _integer(params, "amount")
        credited = sum(
            cn["amount"]
            for cn in self.credit_notes.values()
            if cn["invoice"] == invoice["id"] and cn["status"] == "issued"
        )
        if amount <= 0 or amount + credited > invoice["total"]:
            raise StripeRefusal(
                400,
                f"The credit note amount ({amount}) exceeds what is left to credit on "
                f"{invoice['id']} ({invoice['total'] - credited}).",
                param="amount",
            )
        settled = {name: int(params.get(name, 0)) for name in _SETTLEMENTS}
        self._check_settlement(invoice, amount, settled)
        note = {
            "id": self._new_id("cn"),
            "object": "credit_note",
            "invoice": invoice["id"],
            "customer": invoice["customer"],
            "amount": amount,
            "currency": invoice["currency"],
            "reason": reason,
            "memo": params.get("memo"),
            "metadata": params.get("metadata", {}),
            "status": "issued",
            "type": "post_payment" if invoice["status"] == "paid" else "pre_payment",
            "lines": _list(lines, "/v1/credit_notes/lines"),
            **settled,
        }
        self.credit_notes[note["id"]] = note
        return 200, note

    def _credit_note_line(self, invoice: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
        if line.get("type") != "invoice_line_item":
            return {
                "object": "credit_note_line_item",
                "type": line.get("type"),
                "amount": _integer(line, "amount"),
            }
        invoice_lines = {each["id"]: each for each in invoice["lines"]["data"]}
        target = invoice_lines.get(line.get("invoice_line_item", ""))
        if target is None:
            raise StripeRefusal(
                400,
                f"No such invoice line item on {invoice['id']}: '{line.get('invoice_line_item')}'",
                param="lines",
            )
        amount = _integer(line, "amount") if "amount" in line else target["amount"]
        if amount > target["amount"]:
            raise StripeRefusal(400, "A credit note line exceeds its invoice line.", param="lines")
        return {
            "id": self._new_id("cnli"),
            "object": "credit_note_line_item",
            "type": "invoice_line_item",
            "invoice_line_item": target["id"],
            "amount": amount,
        }

    @staticmethod
    def _check_settlement(invoice: dict[str, Any], amount: int, settled: dict[str, int]) -> None:
        given = sum(settled.values())
        if invoice["status"] == "paid" and given != amount:
            raise StripeRefusal(
                400,
                "On a paid invoice, refund_amount + credit_amount + out_of_band_amount "
                f"must equal the credit note amount ({amount}), not {given}.",
            )
        if invoice["status"] == "open" and given:
            raise StripeRefusal(
                400,
                "refund_amount, credit_amount and out_of_band_amount are only for paid "
                "invoices; a credit note on an open invoice lowers the amount due.",
            )

    def _credit_note_void(self, credit_note_id: str, params: dict[str, Any]) -> Answer:
        note = self._get(self.credit_notes, "credit note", credit_note_id)
        if note["status"] != "issued":
            raise StripeRefusal(400, f"Credit note {credit_note_id} is already void.")
        note["status"] = "void"
        return 200, note

    def _checkout_create(self, params: dict[str, Any]) -> Answer:
        if params.get("mode") != "payment":
            raise StripeRefusal(400, "Only mode=payment is supported by this fake.", param="mode")
        customer = self._customer_for(params) if "customer" in params else None
        items = params.get("line_items") or []
        if not items:
            raise StripeRefusal(400, "line_items is required in payment mode.", param="line_items")
        total = sum(
            _integer(item["price_data"], "unit_amount") * int(item.get("quantity", 1))
            for item in items
        )
        session_id = self._new_id("cs_test")
        intent_data = params.get("payment_intent_data") or {}
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            "status": "open",
            "payment_status": "unpaid",
            "customer": customer,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "amount_total": total,
            "currency": items[0]["price_data"]["currency"],
            "payment_intent": None,
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
        }
        self.checkout_sessions[session_id] = session
        self._session_intent_metadata[session_id] = intent_data.get("metadata", {})
        return 200, session

    def _payment_intent_create(self, params: dict[str, Any]) -> Answer:
        customer = self._customer_for(params) if "customer" in params else None
        amount = _integer(params, "amount")
        if amount < 50:
            raise StripeRefusal(400, "Amount must be at least 50 cents.", param="amount")
        method = params.get("payment_method")
        confirm = params.get("confirm") == "true"
        if confirm and not method:
            raise StripeRefusal(
                400,
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
            )
        declined = confirm and method == "pm_card_chargeDeclined"
        intent = self._intent(
            amount=amount,
            currency=_required(params, "currency"),
            customer=customer,
            metadata=params.get("metadata", {}),
            status="requires_payment_method"
            if declined
            else "succeeded"
            if confirm
            else "requires_confirmation",
            payment_method=method,
        )
        if declined:
            intent["last_payment_error"] = {
                "code": "card_declined",
                "message": "Your card was declined.",
            }
            raise StripeRefusal(
                402,
                "Your card was declined.",
                type="card_error",
                code="card_declined",
                decline_code="generic_decline",
                payment_intent=intent,
            )
        return 200, intent

    def _intent(self, **fields: Any) -> dict[str, Any]:
        intent = {
            "id": self._new_id("pi"),
            "object": "payment_intent",
            "payment_method": None,
            "last_payment_error": None,
            **fields,
        }
        intent["amount_received"] = intent["amount"] if intent["status"] == "succeeded" else 0
        self.payment_intents[intent["id"]] = intent
        return intent

    def _refund_create(self, params: dict[str, Any]) -> Answer:
        intent = self._get(
            self.payment_intents, "payment_intent", _required(params, "payment_intent")
        )
        if intent["status"] != "succeeded":
            raise StripeRefusal(400, f"{intent['id']} has no successful charge to refund.")
        refunded = sum(
            r["amount"] for r in self.refunds.values() if r["payment_intent"] == intent["id"]
        )
        amount = _integer(params, "amount") if "amount" in params else intent["amount"] - refunded
        if amount + refunded > intent["amount_received"]:
            raise StripeRefusal(
                400, "Refund amount is greater than what is left to refund.", param="amount"
            )
        refund = {
            "id": self._new_id("re"),
            "object": "refund",
            "amount": amount,
            "currency": intent["currency"],
            "payment_intent": intent["id"],
            "status": "succeeded",
            "metadata": params.get("metadata", {}),
        }
        self.refunds[refund["id"]] = refund
        return 200, refund


_SETTLEMENTS = ("refund_amount", "credit_amount", "out_of_band_amount")


def _list(data: list[dict[str, Any]], url: str) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": False, "url": url, "total_count": len(data)}


def _required(params: dict[str, Any], name: str) -> Any:
    if not params.get(name):
        raise StripeRefusal(
            400, f"Missing required param: {name}.", code="parameter_missing", param=name
        )
    return params[name]


def _integer(params: dict[str, Any], name: str) -> int:
    value = _required(params, name)
    if not re.fullmatch(r"-?\d+", str(value)):
        raise StripeRefusal(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=name
        )
    return int(value)


def _nest(form: list[tuple[str, str]]) -> dict[str, Any]:
    """``a[b][0][c]=v`` pairs as nested dicts, lists where every key is an index."""
    root: dict[str, Any] = {}
    for key, value in form:
        head, *rest = re.findall(r"[^\[\]]+", key)
        node = root
        for part in [head, *rest][:-1]:
            node = node.setdefault(part, {})
        node[[head, *rest][-1]] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {key: _listify(value) for key, value in node.items()}
    if items and all(key.isdigit() for key in items):
        return [items[key] for key in sorted(items, key=int)]
    return items


def client(fake: FakeStripe | None = None) -> stripe.StripeClient:
    """A real StripeClient whose every request lands in the fake; no socket is opened."""
    return stripe.StripeClient(api_key=API_KEY, http_client=fake or FakeStripe())


def sign(payload: str, secret: str, *, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe would send, made by the library's own signer."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)


def install(monkeypatch: Any, settings: Any) -> FakeStripe:
    """Configure a Stripe key and route the product's gateway to a fresh fake."""
    from billing_portal.stripe import adapter

    fake = FakeStripe()
    gateway = adapter.StripeGateway(client(fake))
    settings.STRIPE_API_KEY = API_KEY
    monkeypatch.setattr(adapter, "gateway_from_settings", lambda: gateway)
    return fake


# --- webhooks, as Stripe delivers them ----------------------------------------------------

WEBHOOK_SECRET = "whsec_test_fake_secret"

# The route the project's urls.py serves; tests mount it with pytest.mark.urls(__name__).
urlpatterns = [path("webhooks/stripe", stripe_webhook)]


def event(kind: str, obj: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    """A Stripe event (snapshot payload) carrying ``obj``."""
    return {
        "id": event_id or f"evt_fake{next(_event_ids):08d}",
        "object": "event",
        "api_version": stripe.api_version,
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": kind,
        "data": {"object": obj},
    }


def deliver(
    http: Any,
    payload: dict[str, Any] | str,
    *,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
    signature: str | None = None,
) -> Any:
    """POST an event to /webhooks/stripe signed as Stripe signs it (or with ``signature``)."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    header = sign(body, secret, timestamp=timestamp) if signature is None else signature
    extra = {"HTTP_STRIPE_SIGNATURE": header} if header else {}
    return http.post("/webhooks/stripe", data=body, content_type="application/json", **extra)
