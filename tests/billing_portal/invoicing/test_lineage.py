"""An invoice line walks back to its raw events and forward to its revenue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from billing_portal.invoicing.models import Invoice, LineKind
from billing_portal.invoicing.period_close import periods_close_due
from billing_portal.invoicing.revenue import revenue_recognize_all
from billing_portal.invoicing.selectors import invoice_line_lineage
from metering.ingest import events_ingest
from metering.rating import events_rate_pending
from plans.models import SubscriptionPeriod
from plans.money import as_money
from plans.services import subscription_start, subscriptions_renew_due
from tests.plans.factories import customer, load_demo_catalog, plan

pytestmark = pytest.mark.django_db


def test_an_overage_line_walks_back_to_its_events_and_forward_to_revenue() -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as clock:
        load_demo_catalog()
        subscription_start(customer=customer(), plan=plan("pro"), actor="t")
        clock.shift(timedelta(days=2))
        events = [
            {
                "identifier": f"req-{n}",
                "event_name": "llm.tokens",
                "customer": "acme",
                "timestamp": datetime.now(UTC).isoformat(),
                "value": "1000000",  # 15,000 credits each
                "dimensions": {"model": "large", "token_type": "output"},
            }
            for n in range(2)
        ]
        events_ingest(events=events)
        events_rate_pending()
        period = SubscriptionPeriod.objects.get()
        clock.move_to(period.end + timedelta(hours=2))
        subscriptions_renew_due()
        clock.shift(timedelta(hours=1))  # the grace window also runs from the late renewal
        periods_close_due()
        invoice = Invoice.objects.get(period=SubscriptionPeriod.objects.get(pk=period.pk))
        revenue_recognize_all()

    line = invoice.lines.get(kind=LineKind.OVERAGE)
    lineage = invoice_line_lineage(line=line)
    assert [e.kind for e in lineage.entries] == ["overage"]
    assert [e.identifier for e in lineage.events] == ["req-1"]  # req-0 fit in the included credits
    assert [(r.kind, as_money(r.amount).amount) for r in lineage.revenue] == [
        ("overage", as_money(line.amount).amount)
    ]
    included = invoice_line_lineage(line=invoice.lines.get(kind=LineKind.INCLUDED_USAGE))
    assert sorted(e.identifier for e in included.events) == ["req-0", "req-1"]
