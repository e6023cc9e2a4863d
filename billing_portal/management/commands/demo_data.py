"""Demo customers, subscriptions, usage and an API key, for `make run`. Runs once: a
second run leaves everything as it is."""

from __future__ import annotations

import random
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.utils import timezone

from billing_portal.portal.models import PortalMembership
from ledger import services as ledger
from metering.ingest import events_ingest
from metering.rating import events_rate_pending
from plans.apikeys import api_key_create
from plans.models import Customer, Plan
from plans.services import customer_create, subscription_start

KEY_FILE = Path(settings.BASE_DIR) / "var" / "demo-api-key"
PORTAL_PASSWORD_FILE = Path(settings.BASE_DIR) / "var" / "demo-portal-password"
PORTAL_USER = "owner@acme.test"


def _portal_password() -> str:
    if not PORTAL_PASSWORD_FILE.exists():
        PORTAL_PASSWORD_FILE.write_text(secrets.token_urlsafe(12))
    return PORTAL_PASSWORD_FILE.read_text().strip()


CUSTOMERS = [
    ("acme", "Acme Robotics", "billing@acme.test", "pro"),
    ("globex", "Globex", "ap@globex.test", "starter"),
    ("initech", "Initech", "finance@initech.test", "team"),
]
MODELS = [("large", "input"), ("large", "output"), ("small", "input"), ("small", "output")]


class Command(BaseCommand):
    help = "Create demo customers with subscriptions and a week of usage (once)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not Plan.objects.exists():
            self.stdout.write("demo data: no catalog loaded, skipped")
            return
        if Customer.objects.filter(external_id="acme").exists():
            self.stdout.write(
                f"demo data: present; API key in {KEY_FILE.relative_to(settings.BASE_DIR)}"
            )
            return
        now = timezone.now()
        for external_id, name, email, plan in CUSTOMERS:
            customer = customer_create(external_id=external_id, name=name, email=email)
            subscription_start(
                customer=customer,
                plan=Plan.objects.get(code=plan),
                actor="system:demo",
                start_at=now - timedelta(days=9),
            )
        acme = Customer.objects.get(external_id="acme")
        ledger.credit_grant_create(
            account=acme.account,
            amount="5000",
            category="promotional",
            actor="system:demo",
            reason="welcome",
            expires_at=now + timedelta(days=60),
        )
        self._usage(now)
        self._portal_owner(acme)
        _, secret = api_key_create(name="demo", scopes=["ingest", "read", "write"])
        KEY_FILE.write_text(secret + "\n")
        where = KEY_FILE.relative_to(settings.BASE_DIR)
        self.stdout.write(f"demo data: 3 customers, a week of usage; API key in {where}")

    def _portal_owner(self, acme: Customer) -> None:
        """A portal sign-in for Acme's owner; demo_setup prints it."""
        user = get_user_model().objects.create_user(
            username=PORTAL_USER, email=PORTAL_USER, password=_portal_password()
        )
        PortalMembership.objects.create(user=user, customer=acme, role="owner")

    def _usage(self, now: Any) -> None:
        rng = random.Random(7)
        events = []
        for external_id, *_ in CUSTOMERS:
            for n in range(300):
                model, token_type = rng.choice(MODELS)
                events.append(
                    {
                        "identifier": f"demo-{external_id}-{n}",
                        "event_name": "llm.tokens",
                        "customer": external_id,
                        "timestamp": (
                            now - timedelta(minutes=rng.randint(5, 7 * 24 * 60))
                        ).isoformat(),
                        "value": str(rng.choice([300, 800, 2_000, 6_000, 20_000])),
                        "dimensions": {"model": model, "token_type": token_type},
                    }
                )
        for start in range(0, len(events), 1000):
            events_ingest(events=events[start : start + 1000])
        events_rate_pending()
