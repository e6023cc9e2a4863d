"""GET /api/v1/customers/{external_id}/ledger_entries: every movement of the customer's
credits, newest first, with its grant, operation (kind, actor, reason) and cause."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ledger import services as ledger
from ledger.models import CreditGrant, LedgerEntry
from plans.services import subscription_start
from tests.billing_portal.api.http_support import Api, error_of
from tests.plans.factories import customer, plan

pytestmark = pytest.mark.django_db(transaction=True)

ENTRY_KEYS = {
    "id",
    "kind",
    "credits",
    "held",
    "grant",
    "hold",
    "operation",
    "operation_kind",
    "actor",
    "reason",
    "cause_type",
    "cause_id",
    "meter",
    "workspace",
    "created_at",
}


@pytest.fixture
def acme_history(api: Api) -> CreditGrant:
    """The included grant of pro, a promotional grant, 120 credits used, the promotion
    voided; another customer's grant beside it."""
    acme = customer("acme")
    subscription_start(customer=acme, plan=plan("pro"), actor="test")
    promo = ledger.credit_grant_create(
        account=acme.account, amount="500", category="promotional", actor="api:backend", priority=0
    )
    ledger.credits_consume(
        account=acme.account, amount="120", cause=ledger.Cause("event", "77"), actor="system:rating"
    )
    ledger.credit_grant_void(grant=promo, actor="staff:ops", reason="goodwill_ended")
    other = customer("globex")
    ledger.credit_grant_create(account=other.account, amount="9", category="paid", actor="test")
    return promo


def test_it_lists_the_customers_entries_newest_first(api: Api, acme_history: CreditGrant) -> None:
    body = api.ok("/customers/acme/ledger_entries")
    assert body["has_more"] is False
    data = body["data"]
    assert all(set(entry) == ENTRY_KEYS for entry in data)
    assert [e["kind"] for e in data] == ["void", "consume", "grant", "grant"]
    stored = LedgerEntry.objects.filter(account__customer__external_id="acme").order_by("-pk")
    assert [e["id"] for e in data] == [str(e.pk) for e in stored]

    void, consume, promo_grant, _ = data
    assert (void["credits"], void["grant"]) == ("-380.000000", str(acme_history.pk))
    assert (void["operation_kind"], void["actor"], void["reason"]) == (
        "void",
        "staff:ops",
        "goodwill_ended",
    )
    assert void["cause_type"] == "staff_action"
    assert (consume["credits"], consume["cause_type"], consume["cause_id"]) == (
        "-120.000000",
        "event",
        "77",
    )
    assert consume["actor"] == "system:rating"
    assert (promo_grant["credits"], promo_grant["actor"]) == ("500.000000", "api:backend")
    assert sum(Decimal(e["credits"]) for e in data) == Decimal(20000)


def test_it_pages_and_filters_by_kind_and_grant(api: Api, acme_history: CreditGrant) -> None:
    pages = api.pages("/customers/acme/ledger_entries", limit=3)
    assert [[e["kind"] for e in page] for page in pages] == [
        ["void", "consume", "grant"],
        ["grant"],
    ]
    grants = api.ok("/customers/acme/ledger_entries", kind="grant")["data"]
    assert [e["kind"] for e in grants] == ["grant", "grant"]
    promo = api.ok("/customers/acme/ledger_entries", grant=str(acme_history.pk))["data"]
    assert [e["kind"] for e in promo] == ["void", "consume", "grant"]


def test_bad_queries_are_400_and_an_unknown_customer_404(
    api: Api, acme_history: CreditGrant
) -> None:
    for params, param in [
        ({"kind": "gift"}, "kind"),
        ({"grant": "abc"}, "grant"),
        ({"limit": "x"}, "limit"),
    ]:
        response = api.get("/customers/acme/ledger_entries", **params)
        assert error_of(response, 400, "invalid_request")["param"] == param
    theirs = LedgerEntry.objects.get(account__customer__external_id="globex").pk
    response = api.get("/customers/acme/ledger_entries", starting_after=str(theirs))
    assert error_of(response, 400, "resource_missing")["param"] == "starting_after"
    error_of(api.get("/customers/nobody/ledger_entries"), 404, "resource_missing")


def test_it_needs_the_read_scope(api: Api, acme_history: CreditGrant) -> None:
    assert api.get("/customers/acme/ledger_entries", key=api.read).status_code == 200
    error_of(api.get("/customers/acme/ledger_entries", key=api.write), 403, "insufficient_scope")
