"""System checks of the billing configuration, run by `manage.py check --deploy`."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register


@register(Tags.security, deploy=True)
def payments_configured(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Production takes money through Stripe; demo payments hand out packs for nothing."""
    if settings.STRIPE_API_KEY:
        return []
    if not settings.BILLING_DEMO_PAYMENTS:
        return [
            Error(
                "No payment provider: STRIPE_API_KEY is empty, so customers cannot buy "
                "credit packs and auto-recharge fails.",
                hint="Set STRIPE_API_KEY (and STRIPE_WEBHOOK_SECRET). For a demo deployment "
                "where packs are free, set BILLING_DEMO_PAYMENTS=true.",
                id="billing.E001",
            )
        ]
    if not settings.DEBUG:
        return [
            Warning(
                "BILLING_DEMO_PAYMENTS is on: credit packs are granted without payment.",
                hint="Only for demos. Set STRIPE_API_KEY and unset BILLING_DEMO_PAYMENTS "
                "to charge customers.",
                id="billing.W001",
            )
        ]
    return []


@register()
def raw_event_retention(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Retention must not remove an event that ingest would still accept again."""
    from metering.retention import retention_problem

    problem = retention_problem(
        settings.METERING_RAW_RETENTION_MONTHS, settings.METERING_MAX_EVENT_AGE_DAYS
    )
    if problem is None:
        return []
    return [
        Error(
            f"{problem}.",
            hint="Raw events are removed in whole months, once their periods are invoiced.",
            id="billing.E002",
        )
    ]
