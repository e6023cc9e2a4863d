"""Writes made from the portal: settings, spend limit, members."""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from djmoney.money import Money

from billing_portal.alerts.models import AlertSettings, AutoRecharge
from billing_portal.portal.models import PortalMembership
from plans.models import CreditPack, Customer


def alert_settings_set(
    *,
    customer: Customer,
    usage_thresholds: list[int],
    low_balance_credits: Decimal | None,
    recipients: list[str],
) -> AlertSettings:
    """Save the customer's own alert rules; from then on they replace the plan's defaults."""
    settings, _ = AlertSettings.objects.update_or_create(
        customer=customer,
        defaults={
            "usage_thresholds": usage_thresholds,
            "low_balance_credits": low_balance_credits,
            "recipients": recipients,
        },
    )
    return settings


def auto_recharge_get(*, customer: Customer) -> AutoRecharge:
    recharge, _ = AutoRecharge.objects.get_or_create(customer=customer)
    return recharge


def auto_recharge_set(
    *,
    customer: Customer,
    enabled: bool,
    threshold_credits: Decimal | None,
    pack: CreditPack | None,
    max_recharges_per_month: int,
    max_amount_per_month: Decimal | None,
) -> AutoRecharge:
    """Save the customer's auto-recharge rule; its money cap is in the customer's currency."""
    cap = None if max_amount_per_month is None else Money(max_amount_per_month, customer.currency)
    values: dict[str, Any] = {
        "enabled": enabled,
        "threshold_credits": threshold_credits,
        "pack": pack,
        "max_recharges_per_month": max_recharges_per_month,
        "max_amount_per_month": cap,
        # Named too: an update saves only the fields named here, and the money's currency
        # lives in a column of its own.
        "max_amount_per_month_currency": customer.currency,
    }
    recharge, _ = AutoRecharge.objects.update_or_create(customer=customer, defaults=values)
    return recharge


def spend_limit_set(*, customer: Customer, limit: Decimal | None) -> Customer:
    # Only this column: authorizations read it, and a stale save must not undo other fields.
    Customer.objects.filter(pk=customer.pk).update(spend_limit_credits=limit)
    customer.spend_limit_credits = limit
    return customer


def member_invite(
    *, customer: Customer, email: str, role: str, invited_by: User | None, site_url: str
) -> PortalMembership:
    """A user without a password and a set-password e-mail: the invitation is the reset link."""
    with transaction.atomic():
        # A random password nobody knows, rather than an unusable one: Django's reset form
        # skips unusable passwords, and an invitee who lost the e-mail must be able to reset.
        user = get_user_model().objects.create_user(
            username=email, email=email, password=secrets.token_urlsafe(32)
        )
        membership = PortalMembership.objects.create(
            user=user, customer=customer, role=role, invited_by=invited_by
        )
        _invitation_send(membership, site_url)
    return membership


def member_invite_resend(*, membership: PortalMembership, site_url: str) -> None:
    """Send a pending member's invitation again, with a fresh link."""
    if not membership.pending:
        raise ValueError("this member has already signed in; there is no invitation to resend")
    with transaction.atomic():
        _invitation_send(membership, site_url)


def _invitation_send(membership: PortalMembership, site_url: str) -> None:
    user, customer = membership.user, membership.customer
    link = site_url.rstrip("/") + reverse(
        "portal:password_reset_confirm",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": default_token_generator.make_token(user),
        },
    )
    body = render_to_string(
        "portal/auth/invite_email.txt",
        {
            "customer": customer,
            "invited_by": membership.invited_by,
            "link": link,
            "role": membership.role,
        },
    )
    subject = f"You are invited to the {customer.name} billing portal"
    transaction.on_commit(lambda: send_mail(subject, body, None, [user.email]))


def member_remove(*, membership: PortalMembership) -> None:
    user = membership.user
    with transaction.atomic():
        membership.delete()
        user.is_active = False
        # A new password hash voids every set-password link sent before (an invitation).
        user.set_unusable_password()
        user.save(update_fields=["is_active", "password"])
