from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Sum
from django.test import Client

from billing_portal.portal.models import PortalMembership
from ledger.models import EntryKind, LedgerEntry
from metering.models import EventRating, MeterEvent, PeriodUsage, UsageRollup
from plans.models import Customer

pytestmark = pytest.mark.django_db


def _generate(**options: object) -> str:
    out = io.StringIO()
    call_command("generate_load_data", stdout=out, **options)
    return out.getvalue()


def test_it_writes_consistent_events_ratings_rollups_and_usage() -> None:
    output = _generate(customers=3, events=2000, days=5, rebuild_from=1000)
    assert "events/s" in output

    customers = Customer.objects.filter(external_id__startswith="load-")
    assert customers.count() == 3
    assert MeterEvent.objects.count() == 2000
    assert EventRating.objects.filter(status="rated").count() == 2000
    rated = EventRating.objects.aggregate(credits=Sum("credits"), units=Sum("units"))
    rolled = UsageRollup.objects.aggregate(
        credits=Sum("credits"), value=Sum("value"), events=Sum("events")
    )
    assert rolled["events"] == 2000
    assert rolled["credits"] == rated["credits"] > 0
    assert rolled["value"] == rated["units"] == MeterEvent.objects.aggregate(v=Sum("value"))["v"]
    usage = PeriodUsage.objects.aggregate(credits=Sum("credits"), events=Sum("events"))
    assert usage == {"credits": rated["credits"], "events": 2000}
    debited = LedgerEntry.objects.filter(kind__in=[EntryKind.CONSUME, EntryKind.OVERAGE]).aggregate(
        total=Sum("credits")
    )["total"]
    assert -debited == rated["credits"]
    assert all(r.period_id is not None for r in EventRating.objects.all()[:50])
    # The indexes dropped for the load are back on every partition, not on the parents
    # alone (a partitioned table's index definition reads "ON ONLY").
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")
        assert cursor.fetchall() == []
        cursor.execute(
            "SELECT c.relname, count(x.indexrelid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "LEFT JOIN pg_index x ON x.indrelid = c.oid "
            "WHERE i.inhparent = 'metering_meterevent'::regclass GROUP BY c.relname"
        )
        per_partition = dict(cursor.fetchall())
    assert set(per_partition.values()) == {5}, per_partition  # as the parent has


def test_it_refuses_a_second_run_and_adds_events_with_more() -> None:
    _generate(customers=2, events=100, days=3)
    with pytest.raises(CommandError, match="already present"):
        _generate(customers=2, events=100, days=3)
    _generate(events=300, days=3, more=True)
    assert MeterEvent.objects.count() == 400
    assert UsageRollup.objects.aggregate(n=Sum("events"))["n"] == 400
    assert PeriodUsage.objects.aggregate(n=Sum("events"))["n"] == 400


def test_the_dashboard_shows_the_generated_usage() -> None:
    _generate(customers=3, events=2000, days=5)
    customer = Customer.objects.filter(external_id__startswith="load-").order_by("pk").first()
    assert customer is not None
    user = get_user_model().objects.create_user(username="owner@load.test", password=None)
    PortalMembership.objects.create(user=user, customer=customer, role="owner")
    client = Client()
    client.force_login(user)

    response = client.get("/portal/", {"range": "7"})
    assert response.status_code == 200
    summary = response.context["summary"]
    used = PeriodUsage.objects.get(customer=customer).credits
    assert summary.used == used > Decimal(0)
    table = response.context["table"]
    assert sum(line.credits for line in table) == used
    assert {line.model for line in table} == {"large", "small"}
    partial = client.get("/portal/", {"range": "7"}, headers={"HX-Request": "true"})
    assert partial.status_code == 200
    assert b"<html" not in partial.content
