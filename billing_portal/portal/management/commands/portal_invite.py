"""Invite a customer's first portal user (an owner then invites the rest from the portal)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from billing_portal.portal import services
from billing_portal.portal.forms import InviteForm
from billing_portal.portal.models import Role
from plans.models import Customer


class Command(BaseCommand):
    help = "Create a portal user for a customer and e-mail them a link to set their password."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("customer", help="the customer's external_id")
        parser.add_argument("email")
        parser.add_argument("--role", choices=Role.values, default=Role.OWNER)
        parser.add_argument(
            "--site-url", default="http://localhost:8000", help="where the portal is served"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        customer = Customer.objects.filter(external_id=options["customer"]).first()
        if customer is None:
            raise CommandError(f"no customer {options['customer']!r}")
        form = InviteForm({"email": options["email"], "role": options["role"]})
        if not form.is_valid():
            raise CommandError(ValidationError(form.errors).messages)
        with transaction.atomic():
            services.member_invite(
                customer=customer,
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
                invited_by=None,
                site_url=options["site_url"],
            )
        self.stdout.write(f"invited {form.cleaned_data['email']} as {options['role']}")
