"""What every endpoint of the HTTP API shares: API-key auth, scopes, throttling, the
error envelope, Idempotency-Key handling and their OpenAPI description.

An endpoint subclasses ``BaseApiView``, declares ``required_scope`` and raises ``ApiError``
(or lets a service's ``DomainError`` or a serializer's ``ValidationError`` escape); every error then
leaves as ``{"error": {"type", "code", "message", "param"}}``.

The DRF defaults in settings do not name these classes: ``rest_framework.views`` reads
them while it is imported, and this module imports it, so the two would import each other.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import IO, Any, ClassVar, NoReturn

import msgspec
import psycopg
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.signals import got_request_exception
from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.defaults import page_not_found
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import exceptions, serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView, set_rollback

from ledger.errors import Conflict, DomainError, IdempotencyConflict, NotFound
from plans.apikeys import api_key_authenticate
from plans.models import ApiKey, ApiKeyRateWindow, ApiScope, IdempotencyRecord

logger = logging.getLogger(__name__)

INVALID_REQUEST_ERROR = "invalid_request_error"
AUTHENTICATION_ERROR = "authentication_error"
PERMISSION_ERROR = "permission_error"
RATE_LIMIT_ERROR = "rate_limit_error"
IDEMPOTENCY_ERROR = "idempotency_error"
API_ERROR = "api_error"
ERROR_TYPES = (
    INVALID_REQUEST_ERROR,
    AUTHENTICATION_ERROR,
    PERMISSION_ERROR,
    RATE_LIMIT_ERROR,
    IDEMPOTENCY_ERROR,
    API_ERROR,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"

# Errors that mean the database cannot be reached (or dropped the connection): the
# request may succeed if retried, so they answer 503, not 500. psycopg's own classes
# come from statements run on the raw connection (the ingest's bulk insert).
DATABASE_UNAVAILABLE_ERRORS = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
UNAVAILABLE_RETRY_AFTER_SECONDS = 5
# Error codes a serializer field may raise (ValidationError(code=...)) that the envelope
# keeps, instead of the generic invalid_request.
FIELD_ERROR_CODES = frozenset({"value_out_of_range"})


# --- errors ---------------------------------------------------------------------------


def error_type_for(status: int) -> str:
    if status >= 500:
        return API_ERROR
    return {
        401: AUTHENTICATION_ERROR,
        403: PERMISSION_ERROR,
        429: RATE_LIMIT_ERROR,
    }.get(status, INVALID_REQUEST_ERROR)


class ApiError(exceptions.APIException):
    """An error answered in the envelope; ``message`` should say what to change."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        *,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status
        self.code = code
        self.message = message
        self.param = param
        self.type = type or error_type_for(status)
        self.headers = dict(headers or {})

    def as_body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
            }
        }


def domain_api_error(exc: DomainError) -> ApiError:
    """The one mapping of a service's refusal to HTTP: 404 when what it names does not
    exist, 409 when it clashes with the state it met, else 400."""
    if isinstance(exc, IdempotencyConflict):
        return ApiError(409, exc.code, exc.message, exc.param, type=IDEMPOTENCY_ERROR)
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
    return ApiError(status, exc.code, exc.message, exc.param)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every error an API view raises, in the envelope."""
    error = _as_api_error(exc, context)
    set_rollback()
    return Response(error.as_body(), status=error.status_code, headers=error.headers)


def api_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """``handler404`` for the root URLconf: unknown URLs under /api/ answer in the envelope."""
    if not request.path.startswith("/api/"):
        return page_not_found(request, exception)
    body = JSONRenderer().render(_not_found(request.path).as_body())
    return HttpResponse(body, status=404, content_type="application/json")


def _as_api_error(exc: Exception, context: dict[str, Any]) -> ApiError:
    request: Request | None = context.get("request")
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DomainError):
        return domain_api_error(exc)
    if isinstance(exc, Http404):
        return _not_found(request.path if request else "")
    if isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    if isinstance(exc, RequestDataTooBig):
        return ApiError(413, "request_too_large", f"{exc} Send a smaller body.")
    if isinstance(exc, exceptions.ValidationError):
        return _validation_error(exc.detail)
    if isinstance(exc, exceptions.APIException):
        return _from_drf(exc, context)
    if isinstance(exc, DATABASE_UNAVAILABLE_ERRORS):
        return service_unavailable(exc, request)
    return _internal_error(exc, request)


def service_unavailable(exc: Exception, request: Request | HttpRequest | None) -> ApiError:
    """503 while the database is down: the client should retry, and nothing was stored."""
    logger.warning("Database unavailable: %s: %s", request and request.path, exc)
    seconds = UNAVAILABLE_RETRY_AFTER_SECONDS
    return ApiError(
        503,
        "service_unavailable",
        f"The service is temporarily unavailable (its database cannot be reached): retry "
        f"in {seconds} seconds with the same request, and the same Idempotency-Key if any.",
        headers={"Retry-After": str(seconds)},
    )


def _not_found(path: str) -> ApiError:
    return ApiError(
        404, "resource_missing", f"No such resource: {path}. Check the URL and the id in it."
    )


def _internal_error(exc: Exception, request: Request | None) -> ApiError:
    logger.error("Internal Server Error: %s", request and request.path, exc_info=exc)
    # As Django does for an uncaught exception: error reporters and the test client listen.
    got_request_exception.send(sender=None, request=request)
    return ApiError(
        500,
        "internal_error",
        "Something went wrong on our side. Retry the request; a POST with the same "
        "Idempotency-Key runs again, since failed requests are not stored.",
    )


def _validation_error(detail: Any) -> ApiError:
    found = _first_error(detail, ())
    if found is None:
        return ApiError(400, "invalid_request", "The request is invalid.")
    path, message = found
    param = ".".join(path) or None
    code = getattr(message, "code", None)
    if param and code == "required":
        text = f"Missing required field '{param}': add it to the request body."
        return ApiError(400, "missing_field", text, param)
    text = f"Invalid value for '{param}': {message}" if param else str(message)
    return ApiError(400, str(code) if code in FIELD_ERROR_CODES else "invalid_request", text, param)


def _first_error(detail: Any, path: tuple[str, ...]) -> tuple[tuple[str, ...], str] | None:
    """The first message in DRF's nested error detail and the dotted path that leads to it."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            inner = path if key == api_settings.NON_FIELD_ERRORS_KEY else (*path, str(key))
            if found := _first_error(value, inner):
                return found
        return None
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            # A list holds either the messages of one field or the errors of each item.
            inner = (*path, str(index)) if isinstance(value, dict | list) else path
            if found := _first_error(value, inner):
                return found
        return None
    return (path, detail) if detail else None


_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ParseError: "invalid_json",
    exceptions.NotAuthenticated: "api_key_required",
    exceptions.AuthenticationFailed: "invalid_api_key",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "resource_missing",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
}


def _from_drf(exc: exceptions.APIException, context: dict[str, Any]) -> ApiError:
    headers = {}
    if auth_header := getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = auth_header
    if isinstance(exc, exceptions.Throttled):
        headers["Retry-After"] = str(_retry_after(getattr(exc, "wait", None)))
    return ApiError(exc.status_code, _code_of(exc), _message_of(exc, context), headers=headers)


def _code_of(exc: exceptions.APIException) -> str:
    given = getattr(exc.detail, "code", None)
    if given and given != exc.default_code:
        return str(given)
    for exc_class, code in _DRF_CODES.items():
        if isinstance(exc, exc_class):
            return code
    return exc.default_code


def _message_of(exc: exceptions.APIException, context: dict[str, Any]) -> str:
    request: Request | None = context.get("request")
    view: APIView | None = context.get("view")
    json_hint = "send a JSON body with the header 'Content-Type: application/json'."
    if isinstance(exc, exceptions.ParseError):
        return f"The request body is not valid JSON ({exc.detail}): {json_hint}"
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return f"{exc.detail} Instead, {json_hint}"
    if isinstance(exc, exceptions.NotAuthenticated):
        return "No API key given: send it in the header 'Authorization: Bearer <key>'."
    if isinstance(exc, exceptions.MethodNotAllowed) and request and view:
        allowed = ", ".join(view.allowed_methods)
        return f"{request.method} is not allowed on {request.path}: use one of {allowed}."
    if isinstance(exc, exceptions.Throttled):
        seconds = _retry_after(getattr(exc, "wait", None))
        return f"Too many requests with this API key: retry after {seconds} second(s)."
    if isinstance(exc, exceptions.NotFound) and request and exc.detail == exc.default_detail:
        return _not_found(request.path).message
    return str(exc.detail)


def _retry_after(wait: float | None) -> int:
    # Whole seconds, at least one: a "0" would invite an immediate retry that fails again.
    return max(1, math.ceil(wait or 0))


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


# --- idempotency ---------------------------------------------------------------------


class IdempotentReplay(Exception):
    """Not an error: carries a stored response out of ``initial`` to be sent instead."""

    def __init__(self, response: Response) -> None:
        super().__init__("replayed")
        self.response = response


def idempotency_claim(*, request: Request, api_key: ApiKey) -> IdempotencyRecord | None:
    """Claim the request's Idempotency-Key before the view runs.

    Returns the claim (None without the header); raises IdempotentReplay with the first
    response when the same request was answered before, or an ApiError when the key is
    reused for another request or its first request is still running.
    """
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    _check_key(key)
    fingerprint = _fingerprint(request)
    try:
        # The unique (api_key, key) constraint decides races: a check-then-insert could
        # let two concurrent retries both run the view.
        with transaction.atomic():
            return IdempotencyRecord.objects.create(
                api_key=api_key,
                key=key,
                method=request.method or "",
                path=request.path[:512],
                request_hash=fingerprint,
            )
    except IntegrityError:
        _replay_or_refuse(api_key=api_key, key=key, fingerprint=fingerprint)


def idempotency_settle(*, record: IdempotencyRecord, response: HttpResponseBase) -> None:
    """Store the response for replay; a 5xx releases the key so the client can retry."""
    if response.status_code >= 500 or not isinstance(response, Response):
        idempotency_release(record=record)
        return
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        status_code=response.status_code, response_body=_plain_json(response.data)
    )


def idempotency_release(*, record: IdempotencyRecord) -> None:
    IdempotencyRecord.objects.filter(pk=record.pk).delete()


def _check_key(key: str) -> None:
    if not key.strip():
        raise ApiError(
            400,
            "idempotency_key_invalid",
            f"The {IDEMPOTENCY_HEADER} header is empty: send a unique value such as a UUID, "
            "or leave the header out.",
        )
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise ApiError(
            400,
            "idempotency_key_too_long",
            f"The {IDEMPOTENCY_HEADER} header is {len(key)} characters long: use at most "
            f"{IDEMPOTENCY_KEY_MAX_LENGTH}, e.g. a UUID.",
        )


def _fingerprint(request: Request) -> str:
    # The raw body: a retry resends the same bytes. The path is hashed whole, so a long
    # one cut short in the record's path column still tells two requests apart.
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    digest.update(request.body)
    return digest.hexdigest()


def _replay_or_refuse(*, api_key: ApiKey, key: str, fingerprint: str) -> NoReturn:
    first = IdempotencyRecord.objects.filter(api_key=api_key, key=key).first()
    if first is not None and first.request_hash != fingerprint:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"This {IDEMPOTENCY_HEADER} was already used for a different request (method, "
            "path or body): send a new key for a new request, or repeat the first one exactly.",
            type=IDEMPOTENCY_ERROR,
        )
    if first is None or first.status_code is None:
        # None: the first request has just failed and released the key.
        raise ApiError(
            409,
            "idempotency_key_in_use",
            f"A request with this {IDEMPOTENCY_HEADER} is still being processed: retry "
            "after it has finished.",
            type=IDEMPOTENCY_ERROR,
        )
    replay = Response(first.response_body, status=first.status_code)
    replay[REPLAYED_HEADER] = "true"
    raise IdempotentReplay(replay)


def _plain_json(data: Any) -> Any:
    # What the client received: Decimals, datetimes and UUIDs as the renderer wrote them.
    if data is None:
        return None
    return json.loads(JSONRenderer().render(data))


# --- OpenAPI -------------------------------------------------------------------------


class ApiErrorSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=ERROR_TYPES)
    code = serializers.CharField(help_text="Stable, machine-readable, e.g. `missing_field`.")
    message = serializers.CharField(help_text="What went wrong and what to change.")
    param = serializers.CharField(
        allow_null=True, help_text="The request field at fault (dotted path), if any."
    )


class ErrorResponseSerializer(serializers.Serializer):
    error = ApiErrorSerializer()


_ERROR_DESCRIPTIONS = {
    400: "Invalid request; `param` names the field to fix.",
    401: "Missing, invalid or revoked API key.",
    403: "The API key lacks the scope this endpoint needs.",
    404: "No such resource.",
    409: "Conflicts with the current state, or an Idempotency-Key reused.",
    429: "Rate limited; retry after the `Retry-After` seconds.",
    503: "The database is unavailable; retry after the `Retry-After` seconds.",
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """Error envelopes for ``extend_schema(responses=...)``; 401, 403 and 429 by default."""
    return {
        status: OpenApiResponse(
            ErrorResponseSerializer, description=_ERROR_DESCRIPTIONS.get(status, "Error.")
        )
        for status in statuses or (401, 403, 429)
    }


IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    name=IDEMPOTENCY_HEADER,
    type=OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    required=False,
    description=(
        "Up to 255 characters, unique per request (a UUID works). A retry with the same key "
        "and body returns the first response again, with `Idempotent-Replayed: true`; the "
        "same key with another body is refused with 409 `idempotency_key_reused`."
    ),
)


class ApiAutoSchema(AutoSchema):
    """Documents what every BaseApiView shares: the Idempotency-Key header on POST, the
    errors any endpoint can answer (auth, throttling, and on POST validation and
    idempotency conflicts), and distinct names for the nested Input/Output serializers."""

    SHARED_ERRORS: ClassVar[dict[str, tuple[int, ...]]] = {
        "POST": (400, 401, 403, 409, 429, 503),
        "GET": (401, 403, 429, 503),
    }

    def get_override_parameters(self) -> list[Any]:
        parameters = list(super().get_override_parameters())
        if self.method == "POST":
            parameters.append(IDEMPOTENCY_KEY_PARAMETER)
        return parameters

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        bodies: dict[str, Any] = super()._get_response_bodies(direction)
        shared = self.SHARED_ERRORS.get(self.method or "", ())
        for status, response in error_responses(*shared).items():
            if str(status) not in bodies:
                bodies[str(status)] = self._get_response_for_code(
                    response, str(status), direction=direction
                )
        return bodies

    def _get_serializer_name(
        self, serializer: Any, direction: Any, bypass_extensions: bool = False
    ) -> str:
        name: str = super()._get_serializer_name(serializer, direction, bypass_extensions)
        if name in {"Input", "Output", "Query"}:
            # One view per operation, each with its own nested Input: name it after the view.
            return type(self.view).__name__.removesuffix("Api") + name
        return name


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return build_bearer_security_scheme_object(
            header_name="Authorization",
            token_prefix="Bearer",  # noqa: S106 - the scheme name, not a secret
        )


# --- request bodies ------------------------------------------------------------------

# Deeper JSON is refused before it is decoded: decoders, and every walk over the decoded
# body (validation, storing rejected events, the JSON column), recurse once per level.
MAX_JSON_DEPTH = 64
# A string, or an unterminated one up to the end (the decoder refuses that body anyway).
_JSON_STRING = re.compile(rb'"[^"]*(?:"|$)')
_NOT_JSON_STRUCTURE = bytes(range(256)).translate(None, b'"[]{}')
_JSON_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_too_deep_message() -> str:
    return (
        f"the body is refused: nesting deeper than {MAX_JSON_DEPTH} levels of arrays and "
        "objects; send a flatter document"
    )


def json_nesting_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON body nests arrays and objects deeper than ``limit``.

    Linear and in C for the most part, so it costs little next to decoding: escapes are
    dropped (so every remaining quote delimits a string), then all but quotes and
    brackets, then the strings with the brackets inside them; the running depth of what
    is left is the nesting. Malformed JSON may be misjudged here; the decoder refuses it.
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = body.translate(None, _NOT_JSON_STRUCTURE)
    if structure.count(b"[") + structure.count(b"{") <= limit:
        return False  # too few brackets to nest deeper, wherever they are
    # Most strings hold no bracket: dropping their quote pairs first leaves the regex
    # little to do. (A pair that closes one string and opens the next only joins them.)
    structure = _JSON_STRING.sub(b"", structure.replace(b'""', b""))
    depths = accumulate(map(_JSON_DEPTH_STEP.__getitem__, structure))
    return max(depths, default=0) > limit


class ApiJSONParser(JSONParser):
    """DRF's JSON parser with a nesting limit (and no RecursionError) before decoding."""

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        body = stream.read()
        if json_nesting_exceeds(body):
            raise _too_deep()
        try:
            return super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError as exc:
            raise _too_deep() from exc


def _too_deep() -> ApiError:
    message = json_too_deep_message()
    return ApiError(400, "invalid_json", f"{message[0].upper()}{message[1:]}.")


# --- the view base -------------------------------------------------------------------


class BaseApiView(APIView):
    """Base of every API endpoint: key auth, ``required_scope``, per-key throttling, and
    Idempotency-Key on POST (the view runs once per key; retries get the stored answer)."""

    authentication_classes = [ApiKeyAuthentication]
    parser_classes = [ApiJSONParser]
    permission_classes = [HasApiScope]
    throttle_classes = [ApiKeyRateThrottle]
    schema = ApiAutoSchema()
    required_scope: ClassVar[str | Mapping[str, str] | None] = None

    _idempotency_record: IdempotencyRecord | None = None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # After auth, scope and throttle checks, so refusals there are never stored. Keys
        # are per API key: a view opened to callers without one takes no Idempotency-Key.
        if request.method == "POST" and isinstance(request.auth, ApiKey):
            self._idempotency_record = idempotency_claim(request=request, api_key=request.auth)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, IdempotentReplay):
            return exc.response
        try:
            return super().handle_exception(exc)
        except Exception:
            self._idempotency_settled(None)
            raise

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        self._idempotency_settled(response)
        return response

    def _idempotency_settled(self, response: HttpResponseBase | None) -> None:
        record, self._idempotency_record = self._idempotency_record, None
        if record is None:
            return
        try:
            if response is None:
                idempotency_release(record=record)
            else:
                idempotency_settle(record=record, response=response)
        except DATABASE_UNAVAILABLE_ERRORS as exc:
            # The database went away after the claim: the answer still goes out. The
            # claim stays unanswered, so a retry with this key is told it is in use.
            logger.warning("Idempotency-Key claim %s left unsettled: %s", record.pk, exc)


class FastJSONRenderer(JSONRenderer):
    """JSON through msgspec: for large responses (an ingest batch's 1000 results)."""

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        if data is None:
            return b""
        return msgspec.json.encode(data)
