"""Feature entitlements over real HTTP: GET /customers/{id}/entitlements, and
POST /authorizations naming a ``feature``.

The demo catalog gives starter a limit of 500 doc summaries per period and pro and team
``gpt4_access``. Each subscription change shows at the very next check.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
import time_machine

from metering.ingest import events_ingest
from metering.rating import events_rate_pending
from metering.services import event_cancel
from plans.models import Customer, PlanVersion, Subscription
from plans.services import (
    subscription_cancel,
    subscription_change_plan,
    subscription_start,
    subscriptions_renew_due,
)
from tests.billing_portal.api.http_support import Api, error_of
from tests.plans.factories import customer, plan

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("http_api_environment"),
]

# Not on the hour: a period then shares its first and last hours with its neighbours.
START = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
PERIOD_END = datetime(2026, 12, 20, 12, 30, tzinfo=UTC)
_ids = count()


def _subscribe(plan_code: str, external_id: str = "acme") -> Subscription:
    return subscription_start(customer=customer(external_id), plan=plan(plan_code), actor="t")


def _summaries(clock: time_machine.Traveller, who: Customer, at: datetime, n: int = 1) -> list[str]:
    """Ingest and rate ``n`` doc summaries stamped ``at``, a minute later; their identifiers."""
    clock.move_to(at + timedelta(minutes=1))
    identifiers = [f"sum-{next(_ids)}" for _ in range(n)]
    events = [
        {
            "identifier": identifier,
            "event_name": "doc.summary",
            "customer": who.external_id,
            "timestamp": at.isoformat(),
            "value": "1",
        }
        for identifier in identifiers
    ]
    outcome = events_ingest(events=events)
    assert outcome.count("accepted") == n, outcome.as_dict()
    events_rate_pending()
    return identifiers


def _features(api: Api, external_id: str = "acme") -> list[dict[str, Any]]:
    body = api.ok(f"/customers/{external_id}/entitlements")
    assert body["customer"] == external_id
    features: list[dict[str, Any]] = body["features"]
    return features


def _used(api: Api, external_id: str = "acme") -> str:
    (summaries,) = _features(api, external_id)
    assert summaries["code"] == "doc_summaries"
    used: str = summaries["used"]
    return used


def _authorize(api: Api, feature: str, external_id: str = "acme", **fields: Any) -> dict[str, Any]:
    body = {"customer": external_id, "identifier": f"auth-{next(_ids)}", "feature": feature}
    response = api.post("/authorizations", {**body, **(fields or {"credits": "1"})})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _reason(api: Api, feature: str, external_id: str = "acme", **fields: Any) -> str | None:
    answer = _authorize(api, feature, external_id, **fields)
    assert (answer["decision"] == "allow") == (answer["reason"] is None), answer
    reason: str | None = answer["reason"]
    return reason


def _set_features(plan_code: str, features: dict[str, Any]) -> None:
    PlanVersion.objects.filter(plan__code=plan_code).update(features=features)


# --- the endpoint -----------------------------------------------------------------------


def test_it_lists_each_feature_with_limit_used_and_remaining(
    api: Api, clock: time_machine.Traveller
) -> None:
    starter = _subscribe("starter").customer
    _subscribe("pro", "beta")
    _summaries(clock, starter, START + timedelta(hours=2), n=3)
    assert _features(api) == [
        {"code": "doc_summaries", "enabled": True, "limit": "500", "used": "3", "remaining": "497"}
    ]
    assert _features(api, "beta") == [
        {"code": "gpt4_access", "enabled": True, "limit": None, "used": None, "remaining": None}
    ]


def test_a_customer_without_a_subscription_has_no_features(
    api: Api, clock: time_machine.Traveller
) -> None:
    customer("bare")
    assert _features(api, "bare") == []
    assert _reason(api, "gpt4_access", "bare") == "no_active_subscription"


def test_an_unknown_customer_is_404_and_the_ingest_scope_may_not_read(
    api: Api, clock: time_machine.Traveller
) -> None:
    _subscribe("pro")
    error_of(api.get("/customers/nobody/entitlements"), 404, "resource_missing")
    assert api.get("/customers/acme/entitlements", key=api.ingest).status_code == 403
    assert api.get("/customers/acme/entitlements", key=api.read).status_code == 200


def test_remaining_never_goes_below_zero(api: Api, clock: time_machine.Traveller) -> None:
    starter = _subscribe("starter").customer
    _set_features("starter", {"doc_summaries": {"meter": "doc_summaries", "limit": "2"}})
    _summaries(
        clock, starter, START + timedelta(hours=1), n=3
    )  # events are accepted past the limit
    (summaries,) = _features(api)
    assert (summaries["used"], summaries["remaining"]) == ("3", "0")


# --- what "used" counts ------------------------------------------------------------------


def test_used_counts_only_the_current_period_and_not_cancelled_events(
    api: Api, clock: time_machine.Traveller
) -> None:
    starter = _subscribe("starter").customer
    _summaries(clock, starter, START + timedelta(minutes=5))  # the period's first, partial hour
    _summaries(clock, starter, START + timedelta(days=3), n=2)  # whole hours: from the rollups
    (cancelled,) = _summaries(clock, starter, START + timedelta(days=4))
    event_cancel(customer=starter, identifier=cancelled, reason="duplicate", actor="t")
    assert _used(api) == "3"
    _summaries(clock, starter, PERIOD_END - timedelta(minutes=5))  # its last, partial hour
    assert _used(api) == "4"

    clock.move_to(PERIOD_END)
    assert subscriptions_renew_due() == 1
    assert _used(api) == "0"  # renewal: a new period, nothing used in it yet
    # 12:40 shares the 12:00 hour with the previous period's 12:25 event.
    _summaries(clock, starter, PERIOD_END + timedelta(minutes=10), n=2)
    assert _used(api) == "2"
    (cancelled,) = _summaries(clock, starter, PERIOD_END + timedelta(hours=3))
    assert _used(api) == "3"
    event_cancel(customer=starter, identifier=cancelled, reason="duplicate", actor="t")
    assert _used(api) == "2"


# --- authorizations -----------------------------------------------------------------------


def test_a_feature_the_plan_lacks_or_turns_off_is_denied_also_in_a_dry_run(
    api: Api, clock: time_machine.Traveller
) -> None:
    _subscribe("starter")
    _subscribe("pro", "beta")
    assert _reason(api, "gpt4_access") == "feature_not_in_plan"
    denied = _authorize(api, "gpt4_access", credits="1", hold=False)
    assert (denied["decision"], denied["reason"], denied["dry_run"]) == (
        "deny",
        "feature_not_in_plan",
        True,
    )
    assert denied["status"] is None  # nothing held
    assert _reason(api, "gpt4_access", "beta") is None
    assert _reason(api, "gpt4_access", "beta", credits="1", hold=False) is None
    assert _reason(api, "video", "beta") == "feature_not_in_plan"
    _set_features("pro", {"gpt4_access": False})
    assert _reason(api, "gpt4_access", "beta") == "feature_not_in_plan"


def test_a_metered_feature_is_denied_once_this_request_would_pass_its_limit(
    api: Api, clock: time_machine.Traveller
) -> None:
    starter = _subscribe("starter").customer
    _set_features("starter", {"doc_summaries": {"meter": "doc_summaries", "limit": "3"}})
    summary = {"event_name": "doc.summary", "value": "1"}
    _summaries(clock, starter, START + timedelta(hours=1), n=2)
    assert _reason(api, "doc_summaries", **summary) is None  # 2 used + 1 = 3: at the limit
    _summaries(clock, starter, START + timedelta(hours=1))
    assert _reason(api, "doc_summaries", **summary) == "feature_limit_reached"
    assert _reason(api, "doc_summaries", **summary, hold=False) == "feature_limit_reached"
    assert _reason(api, "doc_summaries", credits="1") == "feature_limit_reached"  # one use


def test_an_estimate_on_the_features_meter_counts_its_value(
    api: Api, clock: time_machine.Traveller
) -> None:
    starter = _subscribe("starter").customer
    _set_features("starter", {"large_tokens": {"meter": "llm_tokens", "limit": "10000"}})
    clock.move_to(START + timedelta(hours=1, minutes=1))
    outcome = events_ingest(
        events=[
            {
                "identifier": "tokens",
                "event_name": "llm.tokens",
                "customer": starter.external_id,
                "timestamp": (START + timedelta(hours=1)).isoformat(),
                "value": "8000",
                "dimensions": {"model": "small", "token_type": "input"},
            }
        ]
    )
    assert outcome.count("accepted") == 1, outcome.as_dict()
    events_rate_pending()
    tokens: dict[str, Any] = {"event_name": "llm.tokens", "dimensions": {"model": "small"}}
    assert _reason(api, "large_tokens", **tokens, value="2000") is None
    assert _reason(api, "large_tokens", **tokens, value="2001") == "feature_limit_reached"
    assert _reason(api, "large_tokens", credits="1") is None  # 8,001 of 10,000


# --- each subscription change shows at the next check ------------------------------------


def test_an_upgrade_grants_the_new_plans_features_at_once(
    api: Api, clock: time_machine.Traveller
) -> None:
    subscription = _subscribe("starter")
    assert _reason(api, "gpt4_access") == "feature_not_in_plan"
    subscription_change_plan(subscription=subscription, plan=plan("pro"), actor="t", when="now")
    assert _reason(api, "gpt4_access") is None
    assert [f["code"] for f in _features(api)] == ["gpt4_access"]
    assert _reason(api, "doc_summaries") == "feature_not_in_plan"


def test_a_downgrade_keeps_the_features_until_the_renewal_applies_it(
    api: Api, clock: time_machine.Traveller
) -> None:
    subscription = _subscribe("pro")
    subscription_change_plan(subscription=subscription, plan=plan("starter"), actor="t")
    assert _reason(api, "gpt4_access") is None  # scheduled for the period's end
    clock.move_to(PERIOD_END)
    assert subscriptions_renew_due() == 1
    assert _reason(api, "gpt4_access") == "feature_not_in_plan"
    assert [f["code"] for f in _features(api)] == ["doc_summaries"]


def test_cancelling_now_ends_the_features_at_once(api: Api, clock: time_machine.Traveller) -> None:
    subscription = _subscribe("pro")
    clock.move_to(START + timedelta(days=1))
    subscription_cancel(subscription=subscription, actor="t", when="now")
    assert _features(api) == []
    assert _reason(api, "gpt4_access") == "no_active_subscription"


def test_cancelling_at_period_end_keeps_the_features_until_then(
    api: Api, clock: time_machine.Traveller
) -> None:
    subscription = _subscribe("pro")
    subscription_cancel(subscription=subscription, actor="t")
    assert _reason(api, "gpt4_access") is None
    clock.move_to(PERIOD_END)
    assert _features(api) == []  # the period has ended, even before the renewal job runs
    subscriptions_renew_due()
    assert _reason(api, "gpt4_access") == "no_active_subscription"
