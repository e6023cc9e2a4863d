"""Alerts: evaluated each time rating charges a customer, each fired once.

Evaluation runs inside the rating transaction under the customer's account lock, so it
reads a settled balance and two workers never evaluate one customer at once. It is a few
indexed reads sent in one round trip (rating hands over the periods it read). The alert
insert is ``ON CONFLICT DO NOTHING`` on the unique (customer, period, kind, threshold),
which is what makes an alert fire once even when the lock is not held (a direct call, a
future caller). E-mail and webhooks leave after commit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import connection, transaction
from django.utils import timezone
from djmoney.money import Money

from billing_portal.alerts import selectors
from billing_portal.alerts.models import Alert, AlertKind
from billing_portal.invoicing import collection
from billing_portal.invoicing.models import Invoice
from billing_portal.outbound.models import EventType
from billing_portal.outbound.services import event_publish
from ledger.models import Account
from ledger.selectors import BalanceTotals
from ledger.units import credits_text, rfc3339, to_credits
from plans.models import Customer, SubscriptionPeriod
from plans.selectors import period_in_force, period_in_force_among

logger = logging.getLogger(__name__)


@dataclass
class _Candidate:
    kind: str
    threshold: str
    period: SubscriptionPeriod | None
    message: str
    data: dict[str, Any] = field(default_factory=dict)


def usage_evaluate(
    *,
    customer: Customer,
    period_ids: set[int],
    now: datetime | None = None,
    account_locked: bool = False,
    customer_periods: Iterable[SubscriptionPeriod] | None = None,
) -> selectors.UsageFigures:
    """Fire the alerts the customer's latest usage crossed; return the figures read.
    ``account_locked``: the caller holds the customer's account lock (rating does).
    ``customer_periods``: every period of the customer, with its plan version and
    subscription (rating has read them), so that none is read again."""
    now = now or timezone.now()
    # No savepoint of its own: inside rating, the receiver's savepoint covers this.
    with transaction.atomic(savepoint=False):
        if not account_locked:
            list(Account.objects.select_for_update().filter(pk=customer.account_id).values("pk"))
        if customer_periods is None:
            periods = {
                p.pk: p
                for p in SubscriptionPeriod.objects.filter(pk__in=period_ids).select_related(
                    "plan_version__plan", "subscription"
                )
            }
            current = _current_period(customer, periods, now)
        else:
            known = list(customer_periods)
            periods = {p.pk: p for p in known if p.pk in period_ids}
            current = period_in_force_among(known, now)
        if current is not None:
            periods[current.pk] = current
        # Of each period's own included credits: the figure the balance and the dashboard
        # show too (plans.selectors.included_credits_used). The spend limit counts every
        # credit charged in the period, as the balance's spend_limit_reached does.
        figures = selectors.usage_figures_read(
            customer=customer,
            periods=list(periods),
            current=current,
            at=now,
            hour=now.replace(minute=0, second=0, microsecond=0),
            spent=customer.spend_limit_credits is not None,
        )
        candidates = [
            *_usage_thresholds(
                figures.rules,
                [periods[pk] for pk in sorted(period_ids) if pk in periods],
                figures.included_used,
            ),
            *_balance_alerts(customer, figures.rules, figures.balance, current, figures.spent),
            *_burn_alert(figures.burn, current, now),
        ]
        _raise_new(customer, candidates, figures.fired)
    return figures


def _current_period(
    customer: Customer, periods: dict[int, SubscriptionPeriod], now: datetime
) -> SubscriptionPeriod | None:
    # Usage charged to an earlier period (a late event): the current one is read apart.
    found = period_in_force_among(periods.values(), now)
    return found or period_in_force(customer=customer, at=now)


def _usage_thresholds(
    rules: selectors.AlertRules, periods: list[SubscriptionPeriod], used: dict[int, Decimal]
) -> list[_Candidate]:
    found = []
    for period in periods:
        if period.included_credits <= 0:
            continue  # no included credits: a share of nothing is meaningless
        spent = used.get(period.pk, Decimal(0))
        percent = (spent * 100 / period.included_credits).quantize(Decimal("0.01"), ROUND_DOWN)
        for threshold in rules.usage_thresholds_of(period):
            if percent >= threshold:
                found.append(
                    _Candidate(
                        AlertKind.USAGE_THRESHOLD,
                        str(threshold),
                        period,
                        f"{threshold}% of this period's included credits are used "
                        f"({credits_text(spent)} of {credits_text(period.included_credits)}).",
                        {
                            "threshold_percent": threshold,
                            "percent_used": str(percent),
                            "used": str(spent),
                            "included": str(period.included_credits),
                        },
                    )
                )
    return found


def _balance_alerts(
    customer: Customer,
    rules: selectors.AlertRules,
    balance: BalanceTotals,
    period: SubscriptionPeriod | None,
    used: dict[int, Decimal],
) -> list[_Candidate]:
    available = balance.available
    numbers = {
        "available": str(available),
        "posted": str(balance.posted),
        "held": str(balance.held),
    }
    found = []
    low = rules.low_balance_credits
    if low is not None and available < low:
        found.append(
            _Candidate(
                AlertKind.LOW_BALANCE,
                _plain(low),
                period,
                f"Available credits ({credits_text(available)}) fell below {credits_text(low)}.",
                {**numbers, "low_balance_credits": str(low)},
            )
        )
    limit = customer.spend_limit_credits
    spent = used.get(period.pk, Decimal(0)) if period else Decimal(0)
    if limit is not None and spent + balance.held >= limit:
        found.append(
            _Candidate(
                AlertKind.SPEND_LIMIT_REACHED,
                _plain(limit),
                period,
                f"The spend limit of {credits_text(limit)} credits is reached: new requests "
                "are refused until the next period or until the limit is raised.",
                {**numbers, "spend_limit": str(limit), "used": str(spent)},
            )
        )
    if available <= 0:
        found.append(
            _Candidate(
                AlertKind.BALANCE_DEPLETED,
                "0",
                period,
                "The credit balance is used up.",
                numbers,
            )
        )
    return found


def _plain(value: Decimal) -> str:
    """17500.000000 -> "17500", 12.5 -> "12.5": the key an alert is told apart by."""
    return f"{value.normalize():f}"


def _burn_alert(
    burn: selectors.Burn, period: SubscriptionPeriod | None, now: datetime
) -> list[_Candidate]:
    hour = now.replace(minute=0, second=0, microsecond=0)
    factor = Decimal(str(getattr(settings, "ALERT_BURN_FACTOR", "5")))
    minimum = Decimal(str(getattr(settings, "ALERT_BURN_MIN_CREDITS", "100")))
    average = burn.hourly_average
    if average is None or burn.this_hour < minimum or burn.this_hour <= average * factor:
        return []
    return [
        _Candidate(
            AlertKind.ANOMALOUS_BURN,
            hour.isoformat(),
            period,
            f"{credits_text(burn.this_hour)} credits were used in the hour from "
            f"{hour:%Y-%m-%d %H:%M} UTC, over {_plain(factor)} times the 7-day hourly "
            f"average of {credits_text(average)}.",
            {
                "hour": hour.isoformat(),
                "credits": str(burn.this_hour),
                "hourly_average": str(to_credits(average)),
                "factor": str(factor),
            },
        )
    ]


def _raise_new(
    customer: Customer, candidates: list[_Candidate], fired: set[tuple[int | None, str, str]]
) -> None:
    # What already fired is skipped, so the common case inserts nothing.
    for c in candidates:
        if (c.period.pk if c.period else None, c.kind, c.threshold) not in fired:
            alert_raise(
                customer=customer,
                kind=c.kind,
                threshold=c.threshold,
                period=c.period,
                message=c.message,
                data=c.data,
            )


def payment_failed_alert(*, invoice: Invoice) -> Alert | None:
    """Tell the customer a payment of the invoice failed, with the link to pay it and what
    the plan does meanwhile: once per failed attempt (the attempt is in the key)."""
    customer = invoice.customer
    amount = Money(collection.invoice_amount_due(invoice), invoice.currency)
    past_due = collection.past_due_for(customer=customer)
    paused_at = past_due.access_paused_at if past_due else None
    failed_at = invoice.payment_failed_at or timezone.now()
    sentences = [
        f"Your payment of {amount} for invoice {invoice.number} failed: "
        f"{invoice.payment_error.rstrip('.')} (attempt {invoice.payment_attempts}; unpaid "
        f"since {_when(failed_at)})."
    ]
    if invoice.hosted_invoice_url:
        sentences.append(f"Pay it here: {invoice.hosted_invoice_url}")
    if invoice.next_payment_attempt_at:
        sentences.append(f"We will try again on {_when(invoice.next_payment_attempt_at)}.")
    if paused_at is None:
        sentences.append("Your service continues meanwhile.")
    elif paused_at > timezone.now():
        sentences.append(f"Requests will be refused from {_when(paused_at)} until it is paid.")
    else:
        sentences.append("Requests are refused until it is paid.")
    return alert_raise(
        customer=customer,
        kind=AlertKind.PAYMENT_FAILED,
        threshold=f"invoice-{invoice.pk}-attempt-{invoice.payment_attempts}",
        period=invoice.period,
        message=" ".join(sentences),
        data={
            "invoice_id": invoice.pk,
            "invoice": invoice.number,
            "amount_due": str(amount.amount),
            "currency": invoice.currency,
            "attempts": invoice.payment_attempts,
            "payment_failed_at": rfc3339(failed_at),
            "payment_error": invoice.payment_error,
            "next_payment_attempt_at": _rfc3339_or_none(invoice.next_payment_attempt_at),
            "hosted_invoice_url": invoice.hosted_invoice_url,
            "access_paused_at": _rfc3339_or_none(paused_at),
        },
    )


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%-d %b %Y %H:%M} UTC"


def _rfc3339_or_none(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment is not None else None


def alert_raise(
    *,
    customer: Customer,
    kind: str,
    threshold: str,
    period: SubscriptionPeriod | None,
    message: str,
    data: dict[str, Any],
    now: datetime | None = None,
) -> Alert | None:
    """Store the alert unless it already fired; on the first time, notify after commit.

    Returns the new alert, or None when this (customer, period, kind, threshold) fired
    before: a concurrent caller's INSERT waits for the first to commit, then does nothing.
    """
    now = now or timezone.now()
    # The table name is ours; every value is a parameter.
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {Alert._meta.db_table}
                (customer_id, period_id, kind, threshold, message, data, created_at)
            VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s)
            ON CONFLICT DO NOTHING
            RETURNING id
            """,
            [
                customer.pk,
                period.pk if period else None,
                kind,
                threshold,
                message,
                json.dumps(data),
                now,
            ],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    alert = Alert.objects.select_related("period").get(pk=row[0])
    logger.info("alert %s (%s %s) for %s", alert.pk, kind, threshold, customer)
    # Stored in this transaction, sent to the operator's endpoints after commit.
    event_publish(type=EventType.ALERT_TRIGGERED, data=alert_payload(alert), customer=customer)
    if kind == AlertKind.BALANCE_DEPLETED:
        event_publish(type=EventType.BALANCE_DEPLETED, data=alert_payload(alert), customer=customer)
    from billing_portal.alerts.tasks import alert_email_task

    alert_email_task.delay_on_commit(alert.pk)
    return alert


def alert_payload(alert: Alert) -> dict[str, Any]:
    period = alert.period
    return {
        "id": alert.pk,
        "kind": alert.kind,
        "threshold": alert.threshold,
        "message": alert.message,
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat()}
        if period
        else None,
        "data": alert.data,
        "created_at": alert.created_at.isoformat(),
    }


# --- after commit ----------------------------------------------------------------------


def alert_email_send(*, alert: Alert) -> bool:
    """E-mail the alert once; a re-run after success sends nothing.

    Sent before it is marked: a crash in between sends it again on retry, rather than
    never.
    """
    if alert.emailed_at is not None:
        return False
    customer = alert.customer
    recipients = selectors.alert_recipients(customer=customer)
    if recipients:
        send_mail(
            subject=f"[{customer.name}] {alert.get_kind_display()}",
            message=f"{alert.message}\n\nAll alerts are listed under Notifications in the "
            "billing portal.\n",
            from_email=None,
            recipient_list=recipients,
        )
    Alert.objects.filter(pk=alert.pk, emailed_at__isnull=True).update(emailed_at=timezone.now())
    return bool(recipients)


def alert_emails_unsent(*, now: datetime | None = None) -> int:
    """Send the e-mails of alerts whose task never ran (the broker was down when the alert
    fired); alerts older than a day are left unsent rather than mailed late."""
    now = now or timezone.now()
    unsent = Alert.objects.filter(
        emailed_at__isnull=True,
        created_at__lt=now - timedelta(minutes=10),
        created_at__gte=now - timedelta(days=1),
    ).select_related("customer")
    return sum(1 for alert in unsent[:200] if alert_email_send(alert=alert))


def alert_mark_read(*, alert: Alert) -> Alert:
    if alert.read_at is None:
        now = timezone.now()
        Alert.objects.filter(pk=alert.pk, read_at__isnull=True).update(read_at=now)
        alert.read_at = now
    return alert
