from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.test import Client
from django.utils import timezone

from billing_portal.invoicing.purchases import purchase_create, purchase_demo_pay
from ledger.models import LedgerEntry
from metering.services import event_cancel
from plans.models import CreditPack, Customer
from tests.billing_portal.portal.conftest import HTMX
from tests.billing_portal.portal.factories import member, usage


def test_it_describes_ledger_entries_in_plain_words(client_owner: Client, acme: Customer) -> None:
    at = timezone.now() - timedelta(hours=2)
    usage(acme, "evt-2", at=at)
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="t"
    )
    purchase_demo_pay(purchase=purchase, actor="t")
    html = client_owner.get("/portal/activity/").content.decode()
    assert f"2,400 credits used by LLM tokens (large / output) on {at:%-d %b}" in html
    assert "10,000 credits added: pack purchase" in html
    assert "20,000 credits added: credits included in your plan" in html


def test_it_pages_older_activity_through_htmx(client_owner: Client, acme: Customer) -> None:
    for n in range(55):
        usage(acme, f"evt-many-{n}", value="1000")
    first = client_owner.get("/portal/activity/")
    assert first.context["next_page"] == 2
    assert 'href="?page=2"' in first.content.decode()
    second = client_owner.get("/portal/activity/?page=2", **HTMX)
    html = second.content.decode()
    assert "<html" not in html
    assert html.lstrip().startswith('<li class="day">')
    assert "Show older" not in html


def test_it_exports_usage_as_csv(client_owner: Client, acme: Customer) -> None:
    usage(acme, "evt-small", value="20000", dimensions={"model": "small", "token_type": "input"})
    usage(acme, "evt-old", at=timezone.now() - timedelta(days=20))
    today = timezone.now().date()
    response = client_owner.get(
        "/portal/activity/export.csv",
        {"start": f"{today - timedelta(days=2)}", "end": f"{today}"},
    )
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment; filename=" in response["Content-Disposition"]
    body = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [r["identifier"] for r in rows] == ["evt-1", "evt-small"] or [
        r["identifier"] for r in rows
    ] == ["evt-small", "evt-1"]
    small = next(r for r in rows if r["identifier"] == "evt-small")
    assert json.loads(small["dimensions"]) == {"model": "small", "token_type": "input"}
    assert small["value"] == "20000"
    assert small["credits"] == "10.000000"
    assert small["status"] == "rated"
    assert small["timestamp"].endswith("Z")


def test_the_export_shows_a_cancelled_event_and_its_cancellation(
    client_owner: Client, acme: Customer
) -> None:
    usage(acme, "evt-gone", value="20000", dimensions={"model": "small", "token_type": "input"})
    event_cancel(customer=acme, identifier="evt-gone", reason="duplicate", actor="t")
    today = timezone.now().date()
    response = client_owner.get(
        "/portal/activity/export.csv", {"start": f"{today}", "end": f"{today}"}
    )
    body = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    gone = [r for r in csv.DictReader(io.StringIO(body)) if r["identifier"] == "evt-gone"]
    assert [(r["status"], r["credits"]) for r in gone] == [
        ("cancelled", "0.000000"),
        ("cancellation", ""),
    ]
    assert gone[1]["note"] == "duplicate: 10.000000 credits charged, reversed"


def test_it_shows_export_errors_next_to_the_fields(client_owner: Client) -> None:
    response = client_owner.get(
        "/portal/activity/export.csv", {"start": "2026-11-20", "end": "2026-11-01"}
    )
    assert response.status_code == 200
    assert b"The end date must not be before the start date." in response.content
    missing = client_owner.get("/portal/activity/export.csv", {"start": "yesterday"})
    assert b"Enter a valid date." in missing.content
    assert b"This field is required." in missing.content


def test_a_viewer_may_export(viewer_client: Client) -> None:
    today = timezone.now().date()
    response = viewer_client.get(
        "/portal/activity/export.csv", {"start": f"{today}", "end": f"{today}"}
    )
    assert response.status_code == 200


def test_it_lists_a_rating_batch_newest_event_first(client_owner: Client, acme: Customer) -> None:
    from metering.ingest import events_ingest
    from metering.rating import events_rate_pending

    now = timezone.now()
    events_ingest(
        events=[
            {
                "identifier": f"batch-{n}",
                "event_name": "llm.tokens",
                "customer": "acme",
                "timestamp": (now - timedelta(days=n)).isoformat(),
                "value": f"{n + 1}000",
                "dimensions": {"model": "small"},
            }
            for n in (3, 1, 2)
        ]
    )
    events_rate_pending()
    days = client_owner.get("/portal/activity/").context["days"]
    items = [item for day in days for item in day.items]
    texts = [item.text for item in items[:3]]
    assert texts == [
        f"1 credit used by LLM tokens (small) on {now - timedelta(days=1):%-d %b}",
        f"1.50 credits used by LLM tokens (small) on {now - timedelta(days=2):%-d %b}",
        f"2 credits used by LLM tokens (small) on {now - timedelta(days=3):%-d %b}",
    ]


def test_it_filters_by_kind_and_shows_the_balance_after_each_operation(
    client_owner: Client, acme: Customer
) -> None:
    usage(acme, "evt-a", value="160000")  # 2,400 credits of large output tokens
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="t"
    )
    purchase_demo_pay(purchase=purchase, actor="t")
    usage(acme, "evt-b", value="80000")  # 1,200 more
    page = client_owner.get("/portal/activity/")
    rows = [(i.text.split(":")[0], i.balance_after) for d in page.context["days"] for i in d.items]
    # Newest first, from 20,000 included: the fixture's 2,400, evt-a's 2,400, the pack's
    # 10,000, evt-b's 1,200.
    assert [balance for _, balance in rows] == [
        Decimal(24_000),
        Decimal(25_200),
        Decimal(15_200),
        Decimal(17_600),
        Decimal(20_000),
    ]
    html = page.content.decode()
    assert '<th scope="col" class="num">Balance after</th>' in html
    assert ">24,000<" in html

    added = client_owner.get("/portal/activity/?kind=added")
    texts = [i.text for d in added.context["days"] for i in d.items]
    assert texts == [
        "10,000 credits added: pack purchase",
        "20,000 credits added: credits included in your plan",
    ]
    assert 'href="?kind=added" aria-current="true"' in added.content.decode()
    used = client_owner.get("/portal/activity/?kind=usage")
    assert all("used by" in i.text for d in used.context["days"] for i in d.items)
    assert client_owner.get("/portal/activity/?kind=bogus").context["kind"] == ""


def test_days_and_times_read_in_the_customers_time_zone(
    client_owner: Client, acme: Customer
) -> None:
    usage(acme, "evt-late", value="1000")
    recorded = LedgerEntry.objects.filter(account_id=acme.account_id).latest("pk").created_at
    zone = "Pacific/Kiritimati"  # UTC+14: the local day is rarely the UTC day
    saved = client_owner.post("/portal/activity/timezone/", {"timezone": zone}, follow=True)
    assert f"Days and times now show in {zone}." in saved.content.decode()
    acme.refresh_from_db()
    assert acme.timezone == zone
    page = client_owner.get("/portal/activity/")
    local = recorded.astimezone(ZoneInfo(zone))
    assert page.context["days"][0].day == local.date()
    html = page.content.decode()
    assert f"Days and times in {zone}." in html
    assert f'<td class="when">{local:%H:%M}</td>' in html
    refused = client_owner.post("/portal/activity/timezone/", {"timezone": "Mars/Olympus"})
    assert refused.status_code == 400
    assert "Choose a time zone from the list" in refused.content.decode()


def test_a_refused_export_keeps_the_activity_feed(client_owner: Client, acme: Customer) -> None:
    usage(acme, "evt-a", value="160000")
    response = client_owner.get("/portal/activity/export.csv?start=2026-02-30&end=x")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="id_start-error"' in html or "Enter a valid date" in html
    assert "2,400 credits used by" in html  # the feed is still there


def test_a_viewer_cannot_change_the_time_zone(acme: Customer) -> None:
    viewer = Client()
    viewer.force_login(member(acme, "viewer"))
    assert (
        viewer.post("/portal/activity/timezone/", {"timezone": "Europe/Paris"}).status_code == 403
    )
    assert "Save time zone" not in viewer.get("/portal/activity/").content.decode()
