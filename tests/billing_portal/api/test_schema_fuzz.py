"""Property-based requests against the served OpenAPI document.

Every operation of GET /api/schema/ is called through the live server with generated
parameters and bodies, valid ones and invalid ones, authenticated with a key holding
every scope, against customers, grants, a subscription and an authorization that exist.
No answer may be a server error; every status must be one the document lists for the
operation, and every body must match the schema it gives for that status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
import schemathesis
from django.core.cache import cache
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from billing_portal.celery import app as celery_app
from ledger import services as ledger
from ledger.models import GrantCategory
from metering import ingest, services
from metering.rating import events_rate_pending
from plans.apikeys import api_key_create
from plans.services import subscription_start
from tests.billing_portal.api.invoice_factories import credit_note, invoice
from tests.plans.factories import customer, load_demo_catalog, plan

pytestmark = pytest.mark.django_db(transaction=True)

CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]
# (generation mode, fixed path parameters?, examples per operation)
RUNS = [
    (GenerationMode.POSITIVE, True, 20),
    (GenerationMode.POSITIVE, False, 8),
    (GenerationMode.NEGATIVE, True, 12),
]


@pytest.fixture(autouse=True)
def _environment(settings: Any) -> Iterator[None]:
    eager = {"task_always_eager": True, "task_eager_propagates": True}
    saved = {name: celery_app.conf.get(name) for name in eager}
    celery_app.conf.update(eager)
    # Hundreds of requests in a few seconds: the per-key rate limit is not under test.
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "100000/second"},
    }
    cache.clear()
    yield
    cache.clear()
    celery_app.conf.update(saved)


def _seed() -> dict[str, str]:
    """Customers with history; the ids the fixed path parameters point at."""
    load_demo_catalog()
    acme = customer("acme")
    subscription = subscription_start(
        customer=acme,
        plan=plan("pro"),
        actor="test",
        start_at=timezone.now() - timedelta(days=20),
    )
    globex = customer("globex")
    subscription_start(customer=globex, plan=plan("starter"), actor="test")
    at = (timezone.now() - timedelta(hours=2)).astimezone(UTC).isoformat()
    ingest.events_ingest(
        events=[
            {
                "identifier": f"seed-{i}",
                "event_name": "llm.tokens",
                "customer": "acme",
                "timestamp": at,
                "value": str(1000 * (i + 1)),
                "dimensions": {"model": "large", "token_type": "output"},
            }
            for i in range(3)
        ]
    )
    events_rate_pending()
    grant = ledger.credit_grant_create(
        account=acme.account, amount="500", category=GrantCategory.PROMOTIONAL, actor="test"
    )
    authorization = services.authorization_create(
        customer=acme,
        request=services.AuthorizationRequest(identifier="seed-auth", credits=Decimal(25)),
        actor="test",
    )
    acme_invoice = invoice(acme, "35.00")
    note = credit_note(acme_invoice, "10.00")
    return {
        "external_id": acme.external_id,
        "grant_id": str(grant.pk),
        "subscription_id": str(subscription.pk),
        "authorization_id": str(authorization.pk),
        "identifier": "seed-0",
        "credit_note_id": str(note.pk),
        "invoice_id": str(acme_invoice.pk),
    }


def _operations(schema: Any) -> list[schemathesis.APIOperation]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    return operations


def test_every_operation_answers_within_its_schema(live_server: Any) -> None:
    known = _seed()
    _, secret = api_key_create(name="fuzz")
    auth = {"Authorization": f"Bearer {secret}"}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")
    operations = _operations(schema)
    assert len(operations) >= 15

    findings: dict[tuple[str, str], str] = {}
    calls = 0

    def check(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        try:
            case.call_and_validate(base_url=live_server.url, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (case.operation.label, failure.title)
                findings.setdefault(key, f"{failure.message}\n  case: {case!r}"[:1500])

    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        for mode, fixed, examples in RUNS:
            strategy = operation.as_strategy(
                generation_mode=mode,
                headers=auth,
                path_parameters={k: v for k, v in known.items() if k in names} if fixed else None,
            )
            run = settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(given(case=strategy)(check))
            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid: no body and no free parameter.
                assert mode is GenerationMode.NEGATIVE, operation.label
                assert not operation.body, operation.label

    assert calls > 200
    report = "\n\n".join(
        f"{label}: {title}\n{detail}" for (label, title), detail in findings.items()
    )
    assert not findings, report


REQUEST_FIELDS = {
    # operation: (required fields, fields the body may hold)
    "POST /api/v1/customers": ({"external_id", "name", "email"}, {"currency"}),
    "POST /api/v1/subscriptions": ({"customer", "plan"}, {"start_at"}),
    "POST /api/v1/subscriptions/{subscription_id}/change_plan": ({"plan"}, {"when"}),
    "POST /api/v1/subscriptions/{subscription_id}/cancel": (set(), {"when"}),
    "POST /api/v1/customers/{external_id}/credit_grants": (
        {"amount", "category"},
        {"priority", "effective_at", "expires_at", "applies_to", "cost_basis", "reason"},
    ),
    "PATCH /api/v1/customers/{external_id}": (
        set(),
        {"name", "email", "spend_limit_credits", "metadata", "currency"},
    ),
    "POST /api/v1/events/cancel": ({"customer", "identifier", "reason"}, set()),
    "POST /api/v1/authorizations": (
        {"customer", "identifier"},
        {"credits", "event_name", "value", "dimensions", "workspace", "ttl_seconds", "hold"},
    ),
}


def test_each_request_body_is_documented_with_its_own_fields(live_server: Any) -> None:
    document = requests.get(f"{live_server.url}/api/schema/?format=json", timeout=30).json()
    components = document["components"]["schemas"]
    wrong = {}
    for label, (required, optional) in REQUEST_FIELDS.items():
        method, path = label.split(" ", 1)
        body = document["paths"][path][method.lower()]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = components[schema["$ref"].rsplit("/", 1)[1]]
        documented = (set(schema.get("required", [])), set(schema.get("properties", {})))
        if documented[0] != required or not (required | optional) <= documented[1]:
            wrong[label] = {"required": sorted(documented[0]), "fields": sorted(documented[1])}
    assert wrong == {}
