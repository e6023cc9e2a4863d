"""The error envelope and the one mapping of errors to HTTP.

Every error an endpoint raises leaves as ``{"error": {"type", "code", "message", "param"}}``: an
``ApiError`` as it is, a service's ``DomainError`` by its kind (not found 404, conflict
409, else 400), a serializer's ``ValidationError`` as 400 naming the field, a database
outage as 503 with Retry-After, anything else as 500.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.signals import got_request_exception
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.defaults import page_not_found
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView, set_rollback

from billing_portal.web import DATABASE_UNAVAILABLE_ERRORS, UNAVAILABLE_RETRY_AFTER_SECONDS
from ledger.errors import Conflict, DomainError, IdempotencyConflict, NotFound

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


@csrf_exempt
def api_path_unknown(request: HttpRequest, path: str = "") -> HttpResponse:
    """The last route of /api/v1: an unknown path answers the envelope's 404 for every
    method, in DEBUG too (where ``handler404`` is not used), without the database."""
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
