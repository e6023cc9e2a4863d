"""Credit packs: a purchase, its open invoice, and exactly one grant once it is paid."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection
from djmoney.money import Money

from billing_portal.invoicing.models import (
    CreditPackPurchase,
    InvoiceKind,
    InvoiceStatus,
    LineKind,
    PurchaseStatus,
)
from billing_portal.invoicing.purchases import purchase_complete, purchase_create
from ledger.errors import IdempotencyConflict, InvalidRequest
from plans.models import CreditPack, Customer
from tests.billing_portal.invoicing.factories import assert_paid_once
from tests.plans.factories import customer, load_demo_catalog


@pytest.fixture
def acme(db: None) -> Customer:
    load_demo_catalog()
    return customer()


@pytest.fixture
def pack(acme: Customer) -> CreditPack:
    return CreditPack.objects.get(code="pack_10k")


@pytest.fixture
def purchase(acme: Customer, pack: CreditPack) -> CreditPackPurchase:
    return purchase_create(customer=acme, pack=pack, actor="customer:acme")


# --- purchase ---------------------------------------------------------------------------


def test_a_purchase_creates_its_open_invoice(purchase: CreditPackPurchase) -> None:
    assert purchase.status == PurchaseStatus.PENDING
    assert (purchase.credits, purchase.price) == (Decimal(10000), Money("35.00", "USD"))
    assert purchase.expires_after_days == 365
    assert purchase.grant is None
    invoice = purchase.invoice
    assert (invoice.kind, invoice.status, invoice.number) == (
        InvoiceKind.CREDIT_PACK,
        InvoiceStatus.OPEN,
        "INV-000001",
    )
    assert invoice.total == Money("35.00", "USD")
    (line,) = invoice.lines.all()
    assert (line.kind, line.description, line.amount, line.credits) == (
        LineKind.CREDIT_PACK,
        "10,000 credits",
        Money("35.00", "USD"),
        Decimal(10000),
    )


def test_the_same_idempotency_key_buys_once(acme: Customer, pack: CreditPack) -> None:
    first = purchase_create(customer=acme, pack=pack, actor="t", idempotency_key="k1")
    again = purchase_create(customer=acme, pack=pack, actor="t", idempotency_key="k1")
    assert again.pk == first.pk
    assert CreditPackPurchase.objects.count() == 1

    other = CreditPack.objects.get(code="pack_50k")
    with pytest.raises(IdempotencyConflict):
        purchase_create(customer=acme, pack=other, actor="t", idempotency_key="k1")


def test_a_pack_no_longer_sold_cannot_be_bought(acme: Customer, pack: CreditPack) -> None:
    CreditPack.objects.filter(pk=pack.pk).update(active=False)
    pack.refresh_from_db()
    with pytest.raises(InvalidRequest, match="no longer sold"):
        purchase_create(customer=acme, pack=pack, actor="t")
    assert not CreditPackPurchase.objects.exists()


# --- completion ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_completions_racing_grant_once() -> None:
    load_demo_catalog()
    bought = purchase_create(
        customer=customer(), pack=CreditPack.objects.get(code="pack_10k"), actor="t"
    )
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def complete(n: int) -> None:
        try:
            barrier.wait()
            purchase_complete(purchase=bought, payment_intent_id="pi_fake1", actor=f"worker{n}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=complete, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert_paid_once(bought)
