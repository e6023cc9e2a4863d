"""API keys on requests: authentication, scopes and the per-key rate limit."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.db import (
    connection,
)
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from billing_portal.api.models import ApiKeyRateWindow
from plans.apikeys import api_key_authenticate
from plans.models import ApiKey, ApiScope

# --- authentication, scopes, throttling -------------------------------------------------


@dataclass(frozen=True)
class ApiPrincipal:
    """``request.user`` on API calls: the operator behind a key, not a Django user."""

    api_key: ApiKey
    is_authenticated: ClassVar[bool] = True
    is_anonymous: ClassVar[bool] = False

    def __str__(self) -> str:
        return f"API key {self.api_key.prefix}"


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Bearer <key>``; sets ``request.user`` to an ApiPrincipal and
    ``request.auth`` to the ApiKey."""

    def authenticate(self, request: Request) -> tuple[ApiPrincipal, ApiKey] | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise exceptions.AuthenticationFailed(
                "The Authorization header must read 'Bearer <key>'.", code="invalid_api_key"
            )
        api_key = api_key_authenticate(secret=secret.strip())
        if api_key is None:
            raise exceptions.AuthenticationFailed(
                "Invalid or revoked API key: check the key you send, or create a new one "
                "with `manage.py create_api_key`.",
                code="invalid_api_key",
            )
        return ApiPrincipal(api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        # Without a challenge DRF would turn a 401 into a 403.
        return 'Bearer realm="api"'


def request_api_key(request: Request) -> ApiKey:
    """The key an authenticated API request was made with."""
    api_key = request.auth
    if not isinstance(api_key, ApiKey):
        raise exceptions.NotAuthenticated()
    return api_key


class HasApiScope(BasePermission):
    """Requires the scope the view names in ``required_scope``: a scope, or a mapping
    from HTTP method to scope when one URL serves reads and writes."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not isinstance(request.auth, ApiKey):
            return False  # DRF answers 401: no credentials were given
        scope = required_scope_for(view, request.method or "GET")
        if scope is not None and scope not in request.auth.scopes:
            raise exceptions.PermissionDenied(
                f"This API key lacks the '{scope}' scope that {request.method} "
                f"{request.path} needs: use a key created with --scopes including {scope}.",
                code="insufficient_scope",
            )
        return True


def required_scope_for(view: APIView, method: str) -> str | None:
    declared = getattr(view, "required_scope", None)
    if isinstance(declared, Mapping):
        declared = declared.get("GET" if method == "HEAD" else method)
    # A handler without a declared scope would be open to every key: refuse loudly.
    if declared is None and method != "OPTIONS" and hasattr(view, method.lower()):
        raise ImproperlyConfigured(f"{type(view).__name__} declares no required_scope for {method}")
    if declared is not None and declared not in ApiScope.values:
        raise ImproperlyConfigured(f"{type(view).__name__}: unknown scope {declared!r}")
    return declared


class ApiKeyRateThrottle(SimpleRateThrottle):
    """Per API key, at ``DEFAULT_THROTTLE_RATES["api_key"]`` (env API_RATE_LIMIT).

    A fixed window counted in PostgreSQL (``ApiKeyRateWindow``): one upsert per request
    both counts and answers, atomically, so the limit holds exactly across every process
    and machine; a per-process or get-then-set cache count lets several times the limit
    through under concurrency.
    """

    scope = "api_key"
    num_requests: int
    duration: int
    _wait = 0.0

    def get_rate(self) -> str | None:
        # DRF copies the rates at import; reading them here lets a changed setting apply.
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        return None if rate is None else str(rate)

    def allow_request(self, request: Request, view: APIView) -> bool:
        # Windows follow each machine's clock: a skew between web machines moves a window
        # boundary by as much, never the count within a window.
        if self.rate is None or not isinstance(request.auth, ApiKey):
            return True
        count, self._wait = api_key_window_count(api_key=request.auth, seconds=self.duration)
        return count <= self.num_requests

    def wait(self) -> float:
        return self._wait


_WINDOW_COUNT = f"""
WITH expired AS (
    DELETE FROM {ApiKeyRateWindow._meta.db_table}
    WHERE api_key_id = %(key)s AND window_start < %(start)s
)
INSERT INTO {ApiKeyRateWindow._meta.db_table} AS w (api_key_id, window_start, count)
VALUES (%(key)s, %(start)s, 1)
ON CONFLICT (api_key_id, window_start) DO UPDATE SET count = w.count + 1
RETURNING w.count
"""


def api_key_window_count(*, api_key: ApiKey, seconds: int) -> tuple[int, float]:
    """Count a request in the key's current window: (requests so far in it, including
    this one; seconds until the window ends).

    One statement in autocommit: the row lock the upsert takes is held for microseconds,
    and the key's earlier windows go in the same statement (an index probe that finds
    nothing except on the first request of a window).
    """
    now = time.time()
    start = int(now // seconds) * seconds
    with connection.cursor() as cursor:
        cursor.execute(_WINDOW_COUNT, {"key": api_key.pk, "start": start})
        (count,) = cursor.fetchone()
    return count, start + seconds - now
