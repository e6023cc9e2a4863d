"""Bad input over real HTTP answers 4xx in the error envelope, never 500.

Event values above the documented maximum are rejected one by one (the rest of the batch
is stored); bodies nested deeper than the limit are refused whole, before decoding, on
every JSON endpoint; authorization estimates the ledger could not hold are refused with
the field at fault.
"""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.utils import timezone

from billing_portal.web import MAX_JSON_DEPTH
from metering.models import Authorization, MeterEvent, RejectedEvent
from plans.models import MAX_CREDITS, MAX_EVENT_VALUE, Customer, Rate, RateCardVersion
from plans.services import subscription_start
from tests.plans.factories import customer, plan

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("http_api_environment"),
]

API = "/api/v1"


@pytest.fixture
def api(api_server: tuple[str, str]) -> Any:
    base_url, secret = api_server

    def post(path: str, data: bytes | str) -> requests.Response:
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        return requests.post(base_url + API + path, data=data, headers=headers, timeout=60)

    return post


@pytest.fixture
def acme() -> Customer:
    subscriber = customer("acme")
    subscription_start(
        customer=subscriber,
        plan=plan("pro"),
        actor="test",
        start_at=timezone.now() - timedelta(days=20),
    )
    return subscriber


def _event(identifier: str, value: str) -> str:
    """An event as JSON text, ``value`` written as is (a JSON number or a quoted string)."""
    at = (timezone.now() - timedelta(minutes=1)).astimezone(UTC)
    return (
        f'{{"identifier": "{identifier}", "event_name": "llm.tokens", "customer": "acme", '
        f'"timestamp": "{at.strftime("%Y-%m-%dT%H:%M:%SZ")}", "value": {value}, '
        '"dimensions": {"model": "large", "token_type": "output"}}'
    )


def _error(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"type", "code", "message", "param"}
    return error


# --- event values ---------------------------------------------------------------------


VALUES = [
    # (value as written in the JSON body, expected status or rejection code)
    ('"812"', "accepted"),
    (f'"{MAX_EVENT_VALUE}"', "accepted"),
    ('"1000000000.000001"', "value_out_of_range"),
    ('"1e309"', "value_out_of_range"),
    ('"1E+30"', "value_out_of_range"),
    ('"1e22"', "value_out_of_range"),
    ("1e21", "value_out_of_range"),  # a JSON number
    ("100000000000000000000000000000", "value_out_of_range"),  # a JSON integer
    ('"NaN"', "invalid_value"),
    ('"Infinity"', "invalid_value"),
    ('"sNaN"', "invalid_value"),
    ('"abc"', "invalid_value"),
    ('"1e-999999"', "invalid_value"),  # more than 6 decimal places
]


def test_values_above_the_maximum_are_rejected_one_by_one(api: Any, acme: Customer) -> None:
    events = [_event(f"v-{index}", value) for index, (value, _) in enumerate(VALUES)]
    response = api("/events", '{"events": [' + ", ".join(events) + "]}")

    assert response.status_code == 202, response.text
    results = response.json()["results"]
    outcomes = [r["error"]["code"] if r["status"] == "rejected" else r["status"] for r in results]
    assert outcomes == [expected for _, expected in VALUES]
    for result in results:
        if result["status"] == "rejected":
            assert result["error"]["param"] == "value"
        if result["status"] == "rejected" and result["error"]["code"] == "value_out_of_range":
            assert str(MAX_EVENT_VALUE) in result["error"]["message"]
    stored = MeterEvent.objects.order_by("identifier").values_list("identifier", "value")
    assert list(stored) == [("v-0", Decimal(812)), ("v-1", MAX_EVENT_VALUE)]
    assert RejectedEvent.objects.filter(code="value_out_of_range").count() == 6


# --- nesting --------------------------------------------------------------------------


def _nested_objects(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


DEEP_BODIES = {
    "arrays": "[" * 100_000,
    "objects": _nested_objects(10_000),
    "just over the limit": _nested_objects(MAX_JSON_DEPTH + 1),
}


@pytest.mark.parametrize("path", ["/events", "/authorizations", "/customers"])
@pytest.mark.parametrize("shape", list(DEEP_BODIES))
def test_deeply_nested_bodies_are_refused_whole(
    api: Any, acme: Customer, path: str, shape: str
) -> None:
    response = api(path, DEEP_BODIES[shape])

    assert response.status_code == 400, response.text
    error = _error(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_json")
    assert f"nesting deeper than {MAX_JSON_DEPTH} levels" in error["message"]
    assert not MeterEvent.objects.exists()
    assert not RejectedEvent.objects.exists()
    assert not Authorization.objects.exists()
    assert Customer.objects.count() == 1


def test_nesting_up_to_the_limit_reaches_validation(api: Any, acme: Customer) -> None:
    # The batch object, its list and the event take 3 levels: the dimensions get the rest.
    dimensions = "[" * (MAX_JSON_DEPTH - 3) + "]" * (MAX_JSON_DEPTH - 3)
    event = json.loads(_event("deep-dims", '"5"'))
    body = json.dumps({"events": [event]}).replace(
        '"dimensions": {"model": "large", "token_type": "output"}',
        f'"dimensions": {dimensions}',
    )

    response = api("/events", body)

    assert response.status_code == 202, response.text
    assert response.json()["results"][0]["error"]["code"] == "invalid_dimensions"
    assert RejectedEvent.objects.get().code == "invalid_dimensions"


def test_brackets_inside_strings_do_not_count_as_nesting(api: Any, acme: Customer) -> None:
    body = json.dumps(
        {
            "external_id": "globex",
            "name": "[" * 500 + '\\"{' * 200,
            "email": "billing@globex.test",
        }
    )
    response = api("/customers", body)

    # The name is too long for the field, not too deep: validation answers.
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == "name"


# --- authorization estimates ----------------------------------------------------------


def _authorization(**fields: Any) -> str:
    return json.dumps({"customer": "acme", "identifier": "big", **fields})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"credits": "100000000000000"}, "credits"),  # 1e14: one more than the ledger holds
        ({"credits": "1e30"}, "credits"),
        ({"credits": "1e309"}, "credits"),
        ({"event_name": "llm.tokens", "value": "1000000000.000001"}, "value"),
        ({"event_name": "llm.tokens", "value": "1E+30"}, "value"),
        ({"event_name": "llm.tokens", "value": "1e309"}, "value"),
    ],
)
def test_estimates_beyond_what_the_ledger_holds_are_400(
    api: Any, acme: Customer, fields: dict[str, str], param: str
) -> None:
    dimensions = {"model": "large", "token_type": "output"} if "event_name" in fields else {}
    response = api("/authorizations", _authorization(**fields, dimensions=dimensions))

    assert response.status_code == 400, response.text
    error = _error(response)
    assert (error["code"], error["param"]) == ("value_out_of_range", param)
    maximum = MAX_CREDITS if param == "credits" else MAX_EVENT_VALUE
    assert str(maximum) in error["message"]
    assert not Authorization.objects.exists()


def test_the_largest_estimates_are_answered(api: Any, acme: Customer) -> None:
    credits = api("/authorizations", _authorization(credits=str(MAX_CREDITS), hold=False))
    assert credits.status_code == 200, credits.text
    value = api(
        "/authorizations",
        json.dumps(
            {
                "customer": "acme",
                "identifier": "big-value",
                "event_name": "llm.tokens",
                "value": str(MAX_EVENT_VALUE),
                "dimensions": {"model": "large", "token_type": "output"},
            }
        ),
    )
    assert value.status_code == 200, value.text
    assert Decimal(value.json()["credits"]) == MAX_EVENT_VALUE * 15 / 1000


@pytest.mark.parametrize("credits_per_unit", ["1000000", "10000000000000"])
def test_an_estimate_priced_above_the_ledger_by_an_old_rate_is_400(
    api: Any, acme: Customer, credits_per_unit: str
) -> None:
    # A rate stored before catalogs bounded credits per unit (the catalog refuses it now).
    version = RateCardVersion.objects.get(rate_card__code="standard")
    Rate.objects.filter(version=version, match={"model": "small"}).update(
        credits=Decimal(credits_per_unit), per=1
    )
    body = _authorization(
        event_name="llm.tokens", value=str(MAX_EVENT_VALUE), dimensions={"model": "small"}
    )

    response = api("/authorizations", body)

    assert response.status_code == 400, response.text
    error = _error(response)
    assert (error["code"], error["param"]) == ("value_out_of_range", "value")
    assert not Authorization.objects.exists()
