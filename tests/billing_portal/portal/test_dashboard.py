from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from djmoney.money import Money

from billing_portal.portal.selectors import nice_ceiling
from ledger.services import credit_grant_create
from metering.ingest import events_ingest
from metering.rating import events_rate_pending
from metering.selectors import balance_payload
from metering.services import event_cancel
from plans.models import Customer, Workspace
from tests.billing_portal.portal.conftest import HTMX
from tests.billing_portal.portal.factories import member, subscribed_customer, usage
from tests.plans.factories import customer, load_demo_catalog


def test_it_shows_the_balance_api_numbers(client_owner: Client, acme: Customer) -> None:
    payload = balance_payload(acme)
    assert Decimal(payload["available"]) == Decimal("17600")
    response = client_owner.get("/portal/")
    assert response.status_code == 200
    summary = response.context["summary"]
    assert summary.available == Decimal(payload["available"])
    assert summary.held == Decimal(payload["held"])
    assert summary.used == Decimal("2400")
    assert summary.included_left == Decimal("17600")
    html = response.content.decode()
    assert '<strong id="available">17,600</strong>' in html
    assert '<strong id="used">2,400</strong>' in html
    assert "<html" in html


def test_it_projects_the_run_out_date_from_the_burn_rate(
    client_owner: Client, acme: Customer
) -> None:
    summary = client_owner.get("/portal/").context["summary"]
    # 2,400 credits in the 5 days since the period started: 480 a day, 17,600 left.
    assert summary.daily_burn.quantize(Decimal(1)) == Decimal(480)
    expected = (timezone.now() + timedelta(days=36)).date()
    assert abs((summary.run_out_on - expected).days) <= 1
    assert 23 <= summary.days_left <= 26  # a month from 5 days ago


def test_it_says_what_happens_when_credits_run_out(client_owner: Client) -> None:
    html = client_owner.get("/portal/").content.decode()
    assert "usage continues when credits run out and is billed as overage" in html
    assert "at $0.004 per credit" in html


def test_it_says_a_hard_stop_plan_refuses_requests(db: None) -> None:
    from tests.plans.factories import load_demo_catalog

    load_demo_catalog()
    starter = subscribed_customer("tiny", "starter")
    starter.spend_limit_credits = Decimal(1500)
    starter.save()
    client = Client()
    client.force_login(member(starter))
    html = client.get("/portal/").content.decode()
    assert "requests are refused as soon as your credits run out" in html
    assert "Your monthly spend limit stops all usage at 1,500 credits." in html
    assert "Not at current usage" in html


def test_it_draws_the_usage_chart_and_table(client_owner: Client, acme: Customer) -> None:
    usage(acme, "evt-small", value="20000", dimensions={"model": "small", "token_type": "input"})
    usage(acme, "evt-doc", value="1", event_name="doc.summary")
    response = client_owner.get("/portal/?range=7&group=model")
    html = response.content.decode()
    assert "<svg" in html
    assert html.count("<rect") == 3
    labels = [label for label, _ in response.context["chart"].legend]
    assert labels == ["Document summaries", "large", "small"]
    rows = [(r.feature, r.model, r.token_type, r.credits) for r in response.context["table"]]
    assert rows == [
        ("LLM tokens", "large", "output", Decimal(2400)),
        ("Document summaries", "", "", Decimal(50)),
        ("LLM tokens", "small", "input", Decimal(10)),
    ]
    assert response.context["table_total"] == Decimal(2460)
    assert '<th scope="row">Total</th>' in html and ">2,460<" in html
    chart = response.context["chart"]
    # The axis tops out at a round number above the tallest day (2,460): 2,500, with
    # gridlines every 625 credits, each labelled.
    assert [t.credits for t in chart.ticks] == [0, 625, 1250, 1875, 2500]
    assert ">credits</text>" in html and ">1,875</text>" in html
    today = [bar for bar in chart.bars if bar.segments][-1]
    assert today.description.endswith(
        ": 2,460 credits (Document summaries 50; large 2,400; small 10)"
    )
    assert f'tabindex="0" role="img" aria-label="{today.description}"' in html
    assert "Daily values (2,460 credits in the last 7 days)" in html


@pytest.mark.parametrize(
    ("peak", "top"),
    [("0.4", "0.5"), ("7", "10"), ("2460", "2500"), ("12001", "20000"), ("1", "1")],
)
def test_the_axis_tops_out_at_a_round_number(peak: str, top: str) -> None:
    assert nice_ceiling(Decimal(peak)) == Decimal(top)


def test_it_stacks_by_feature(client_owner: Client, acme: Customer) -> None:
    usage(acme, "evt-doc", value="1", event_name="doc.summary")
    response = client_owner.get("/portal/?range=30&group=feature")
    labels = [label for label, _ in response.context["chart"].legend]
    assert labels == ["Document summaries", "LLM tokens"]
    assert len(response.context["chart"].bars) == 30


def test_it_answers_htmx_with_the_usage_partial_only(client_owner: Client) -> None:
    response = client_owner.get("/portal/?range=7&group=feature", **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="usage"')
    assert "<html" not in html
    assert 'id="available"' not in html
    assert "HX-Request" in response["Vary"]
    assert 'hx-get="?range=90&amp;group=feature"' in html
    assert 'href="?range=90&amp;group=feature"' in html


def test_it_ignores_an_unknown_range(client_owner: Client) -> None:
    response = client_owner.get("/portal/?range=9999&group=nope")
    assert response.context["range_key"] == "30"
    assert response.context["group"] == "model"


def test_it_works_for_a_viewer(viewer_client: Client) -> None:
    assert viewer_client.get("/portal/").status_code == 200


def test_it_shows_usage_beyond_the_credits(client_owner: Client, acme: Customer) -> None:
    usage(acme, "evt-big", value="1400000")  # 21,000 credits; 17,600 were left
    response = client_owner.get("/portal/")
    summary = response.context["summary"]
    assert summary.available == 0
    assert summary.overage == Decimal(3400)
    assert "3,400 beyond your credits" in response.content.decode()
    assert summary.run_out_on == timezone.now().date()


def test_it_answers_a_history_restore_with_the_whole_page(client_owner: Client) -> None:
    response = client_owner.get(
        "/portal/?range=7", HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"
    )
    assert "<html" in response.content.decode()


def test_an_llm_call_shows_as_its_parts_by_their_display_names(
    client_owner: Client, acme: Customer
) -> None:
    outcome = events_ingest(
        events=[
            {
                "identifier": "call-1",
                "event_name": "llm.call",
                "customer": acme.external_id,
                "timestamp": (timezone.now() - timedelta(hours=1)).isoformat(),
                "properties": {
                    "model": "large",
                    "input_tokens": 4000,
                    "output_tokens": 1000,
                    "cached_tokens": 0,
                },
            }
        ]
    )
    assert outcome.count("accepted") == 1, outcome.as_dict()
    events_rate_pending()
    response = client_owner.get("/portal/?range=7&group=feature")
    labels = [label for label, _ in response.context["chart"].legend]
    parts = ["Cached input tokens", "Input tokens", "Output tokens"]
    assert [label for label in labels if label in parts] == parts
    rows = [
        (r.feature, r.model, r.credits) for r in response.context["table"] if r.feature in parts
    ]
    # 4,000 x 2.5 and 1,000 x 15 per 1,000 tokens (docs/examples/catalog.yaml).
    assert rows == [
        ("Output tokens", "large", Decimal(15)),
        ("Input tokens", "large", Decimal(10)),
        ("Cached input tokens", "large", Decimal(0)),
    ]
    feed = client_owner.get("/portal/activity/").content.decode()
    assert "used by Output tokens (large)" in feed


def test_it_shows_the_estimated_bill_so_far_in_money(client_owner: Client, acme: Customer) -> None:
    usage(acme, "evt-big", value="1400000")  # 3,400 credits beyond the 20,000 included
    response = client_owner.get("/portal/")
    assert response.context["estimated_bill"] == Money("62.60", "USD")  # $49.00 + 3,400 x $0.004
    html = response.content.decode()
    assert "Estimated bill so far" in html
    assert '<strong id="estimated-bill">$62.60</strong>' in html


def test_it_shows_no_estimate_without_an_open_period(db: None) -> None:
    bare = customer("bare")
    client = Client()
    client.force_login(member(bare))
    response = client.get("/portal/")
    assert response.context["estimated_bill"] is None
    assert "Estimated bill so far" not in response.content.decode()


def test_it_shows_the_plans_features(client_owner: Client, acme: Customer) -> None:
    response = client_owner.get("/portal/")
    assert [(f.name, f.included, f.usage) for f in response.context["features"]] == [
        ("Gpt4 access", True, None)
    ]
    assert "<li><strong>Gpt4 access</strong>: included</li>" in response.content.decode()


def test_it_shows_a_limited_features_use_this_period(db: None) -> None:
    load_demo_catalog()
    starter = subscribed_customer("starter-co", plan_code="starter")
    for n in range(3):
        usage(starter, f"summary-{n}", event_name="doc.summary", value="1")
    client = Client()
    client.force_login(member(starter))
    html = client.get("/portal/").content.decode()
    assert (
        "<li><strong>Doc summaries</strong>: 3 of 500 summaries used this period, 497 left</li>"
    ) in html


def test_it_shows_no_features_without_a_subscription(db: None) -> None:
    client = Client()
    client.force_login(member(customer("bare")))
    response = client.get("/portal/")
    assert response.context["features"] == []
    assert "Your plan's features" not in response.content.decode()


def test_it_shows_what_the_balance_is_made_of_and_what_expires_soon(
    client_owner: Client, acme: Customer
) -> None:
    now = timezone.now()
    credit_grant_create(
        account=acme.account,
        amount="5000",
        category="promotional",
        actor="test",
        expires_at=now + timedelta(days=5, hours=1),
    )
    credit_grant_create(
        account=acme.account,
        amount="300",
        category="promotional",
        actor="test",
        workspace="research",
        expires_at=now + timedelta(days=60),
    )
    response = client_owner.get("/portal/")
    parts = [
        (p.source, p.remaining, p.expiring_in_days, p.workspace)
        for p in response.context["balance_parts"]
    ]
    # Pro's 20,000 included credits less the fixture's 2,400 of usage, expiring with the
    # period (a month away: no warning); soonest expiry first.
    assert parts == [
        ("Promotional credits", Decimal(5000), 5, None),
        ("Credits included in your plan", Decimal(17600), None, None),
        ("Promotional credits", Decimal(300), None, "research"),
    ]
    assert sum(p.remaining for p in response.context["balance_parts"] if not p.workspace) == (
        response.context["summary"].available + response.context["summary"].held
    )
    html = response.content.decode()
    assert "expiring in 5 days" in html
    assert "(workspace research)" in html


def test_a_soft_limit_percent_reads_without_storage_zeros(db: None) -> None:
    load_demo_catalog()
    team = subscribed_customer("team-co", plan_code="team")
    client = Client()
    client.force_login(member(team))
    html = client.get("/portal/").content.decode()
    assert "usage may go up to 10% beyond your credits" in html
    assert "10.00%" not in html


def test_the_last_24_hours_are_drawn_hour_by_hour(client_owner: Client, acme: Customer) -> None:
    now = timezone.now()
    usage(acme, "evt-hour", at=now - timedelta(hours=3), value="20000")
    response = client_owner.get("/portal/?range=1")
    chart, window = response.context["chart"], response.context["window"]
    assert window.hourly and len(chart.bars) == 24
    hour = (now - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    (bar,) = [b for b in chart.bars if b.hour == hour and b.segments]
    assert bar.total == Decimal(300)  # 20,000 large output tokens at 15 per 1,000
    assert bar.label == f"{hour:%H:00}"
    html = response.content.decode()
    assert "Credits used in the last 24 hours, hour by hour (UTC)." in html
    assert 'aria-current="true">24 hours</a>' in html


def test_customers_choose_the_days_shown(client_owner: Client, acme: Customer) -> None:
    today = timezone.now().date()
    # The subscription began 5 days ago (and its fixture event is today).
    usage(acme, "evt-old", at=timezone.now() - timedelta(days=3), value="20000")
    first, last = today - timedelta(days=5), today - timedelta(days=1)
    response = client_owner.get(f"/portal/?start={first:%Y-%m-%d}&end={last:%Y-%m-%d}")
    window, chart = response.context["window"], response.context["chart"]
    assert (window.key, window.hourly, len(chart.bars)) == ("custom", False, 5)
    assert chart.total == Decimal(300)  # evt-old only; today's events are after the range
    assert [line.credits for line in response.context["table"]] == [Decimal(300)]
    html = response.content.decode()
    assert f"Credits used in {first:%-d %b %Y} to {last:%-d %b %Y}." in html
    two_days = client_owner.get(
        f"/portal/?start={today - timedelta(days=1):%Y-%m-%d}&end={today:%Y-%m-%d}"
    )
    assert two_days.context["window"].hourly  # two days or fewer: hour by hour


def test_a_custom_range_that_makes_no_sense_says_what_to_change(client_owner: Client) -> None:
    today = timezone.now().date()
    backwards = client_owner.get(
        f"/portal/?start={today:%Y-%m-%d}&end={today - timedelta(days=3):%Y-%m-%d}"
    )
    assert "Choose a day on or after the first one." in backwards.content.decode()
    assert backwards.context["window"].key == "30"  # the default range is shown meanwhile
    long = client_owner.get(
        f"/portal/?start={today - timedelta(days=400):%Y-%m-%d}&end={today:%Y-%m-%d}"
    )
    assert "Choose at most 366 days." in long.content.decode()


def test_usage_is_broken_down_by_workspace(client_owner: Client, acme: Customer) -> None:
    Workspace.objects.create(customer=acme, key="team-a", name="Research")
    at = (timezone.now() - timedelta(hours=1)).isoformat()
    events = [
        {
            "identifier": f"ws-{n}",
            "event_name": "llm.tokens",
            "customer": acme.external_id,
            "timestamp": at,
            "value": "20000",  # 300 credits of large output tokens each
            "dimensions": {"model": "large", "token_type": "output"},
            "workspace": workspace,
        }
        for n, workspace in enumerate(["team-a", "team-a", "team-b"])
    ]
    assert events_ingest(events=events).count("accepted") == 3
    events_rate_pending()
    event_cancel(customer=acme, identifier="ws-1", reason="duplicate", actor="t")
    response = client_owner.get("/portal/?range=7&group=workspace")
    chart = response.context["chart"]
    totals: dict[str, Decimal] = {}
    for bar in chart.bars:
        for segment in bar.segments:
            totals[segment.label] = totals.get(segment.label, Decimal(0)) + segment.credits
    # The fixture's event has no workspace; team-a's second event was cancelled.
    assert totals == {
        "No workspace": Decimal(2400),
        "Research": Decimal(300),
        "team-b": Decimal(300),
    }
    assert 'aria-current="true">by workspace</a>' in response.content.decode()


def test_the_page_reads_the_balance_once(client_owner: Client) -> None:
    client_owner.get("/portal/")  # sessions and caches warm
    with CaptureQueriesContext(connection) as queries:
        response = client_owner.get("/portal/")
    assert response.status_code == 200
    statements = [q["sql"] for q in queries.captured_queries]
    # The summary, the balance's parts, the limits notice and the plan's features share
    # one reading: once each read the account, its grants and the period themselves.
    assert sum('FROM "ledger_account"' in sql for sql in statements) == 1
    # The period's counters: the balance's used and overage, and the estimated bill's.
    assert sum('FROM "metering_periodusage"' in sql for sql in statements) == 2
    assert sum('FROM "plans_subscriptionperiod"' in sql for sql in statements) == 1
    assert len(statements) <= 20, "\n".join(statements)
