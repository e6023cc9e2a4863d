"""Who may use a customer's portal.

The alert and auto-recharge settings members keep are alerts' models
(``billing_portal.alerts.models``); the spend limit lives on ``plans.Customer`` because
authorizations enforce it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    OWNER = "owner"
    ADMIN = "admin"
    VIEWER = "viewer"


# What each role may do, as the team page explains it (portal.access enforces it).
ROLE_HELP = {
    Role.OWNER: "Everything an admin can, and invites and removes team members.",
    Role.ADMIN: "Changes the plan, buys credits, and sets alerts, spend limits and auto-recharge.",
    Role.VIEWER: "Sees usage, balance, invoices and activity, and downloads exports; "
    "changes nothing.",
}


class PortalMembership(models.Model):
    """A portal user belongs to exactly one customer."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="portal_membership"
    )
    customer = models.ForeignKey(
        "plans.Customer", on_delete=models.PROTECT, related_name="portal_members"
    )
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.VIEWER)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} ({self.role} of {self.customer_id})"

    @property
    def can_manage(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)

    @property
    def is_owner(self) -> bool:
        return self.role == Role.OWNER

    @property
    def pending(self) -> bool:
        """Invited and never signed in: the invitation has not been taken up."""
        return self.user.last_login is None
