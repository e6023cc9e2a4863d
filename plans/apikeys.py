"""Operators' API keys: create, revoke, authenticate.

A key reads ``sk_<12 hex>_<secret>``. Its first ``PREFIX_LENGTH`` characters are stored in
clear as ``prefix`` so a request can find its row with one indexed lookup; the whole key is
stored only as a SHA-256, so a copy of the database does not let anyone call the API.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import timedelta

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from ledger.errors import DomainError
from ledger.sql import model_columns, model_instance
from plans.models import ApiKey, ApiScope

PREFIX_LENGTH = 15  # "sk_" + 12 hex characters
ALL_SCOPES: tuple[str, ...] = tuple(ApiScope.values)
# A busy key would otherwise write its row on every request.
LAST_USED_PRECISION = timedelta(minutes=1)


class InvalidApiKeyRequest(DomainError):
    """The name or scopes asked for cannot make a key; the message says what to change."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _scopes_checked(scopes: Iterable[str]) -> list[str]:
    wanted = {scope.strip() for scope in scopes if scope.strip()}
    unknown = sorted(wanted - set(ALL_SCOPES))
    if unknown:
        raise InvalidApiKeyRequest(
            f"unknown scope(s): {', '.join(unknown)}; allowed scopes: {', '.join(ALL_SCOPES)}"
        )
    if not wanted:
        raise InvalidApiKeyRequest(f"give at least one scope of: {', '.join(ALL_SCOPES)}")
    return [scope for scope in ALL_SCOPES if scope in wanted]


def api_key_create(*, name: str, scopes: Iterable[str] = ALL_SCOPES) -> tuple[ApiKey, str]:
    """Create a key; the secret is returned here once and never stored."""
    name = name.strip()
    if not name:
        raise InvalidApiKeyRequest("give the key a name, e.g. the service that will use it")
    checked = _scopes_checked(scopes)
    prefix = f"sk_{secrets.token_hex(6)}"
    secret = f"{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        name=name, prefix=prefix, key_hash=_hash(secret), scopes=checked
    )
    return api_key, secret


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key; revoking twice keeps the first revocation time."""
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


# ``ApiKey.objects.filter(prefix=...).first()``, written once: every API request runs it,
# and compiling the queryset cost more than running it.
_BY_PREFIX = f"""
SELECT {model_columns(ApiKey, "k")} FROM {ApiKey._meta.db_table} k
WHERE k.prefix = %s ORDER BY k.id LIMIT 1
"""


def api_key_authenticate(*, secret: str) -> ApiKey | None:
    """The live key this secret belongs to, or None for an unknown or revoked one."""
    with connection.cursor() as cursor:
        cursor.execute(_BY_PREFIX, [secret[:PREFIX_LENGTH]])
        row = cursor.fetchone()
    api_key = None if row is None else model_instance(ApiKey, row)[0]
    # Compare digests in constant time so response timing does not leak how much matched.
    if api_key is None or not hmac.compare_digest(api_key.key_hash, _hash(secret)):
        return None
    if api_key.revoked_at is not None:
        return None
    _record_use(api_key)
    return api_key


def _record_use(api_key: ApiKey) -> None:
    now = timezone.now()
    stale_before = now - LAST_USED_PRECISION
    if api_key.last_used_at is not None and api_key.last_used_at > stale_before:
        return
    # Conditional, so concurrent requests of one key make at most one write per minute.
    ApiKey.objects.filter(pk=api_key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale_before)
    ).update(last_used_at=now)
    api_key.last_used_at = now
