from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from ledger import services
from ledger.models import Account, CreditGrant


def account() -> Account:
    return services.account_create()


def grant(
    acct: Account,
    amount: str | Decimal = "100",
    *,
    category: str = "promotional",
    effective_at: datetime | None = None,
    expires_in: timedelta | None = None,
    **kwargs: object,
) -> CreditGrant:
    effective_at = effective_at or timezone.now() - timedelta(seconds=1)
    expires_at = effective_at + expires_in if expires_in is not None else None
    return services.credit_grant_create(
        account=acct,
        amount=amount,
        category=category,
        actor="test",
        effective_at=effective_at,
        expires_at=expires_at,
        **kwargs,  # type: ignore[arg-type]
    )
